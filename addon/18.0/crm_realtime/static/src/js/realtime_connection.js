/** @odoo-module **/
/**
 * One Socket.IO connection to the crm-realtime sidecar, kept authenticated
 * with the short-lived tokens the ERP mints.
 *
 * It imports nothing from Odoo: it is handed
 *   fetchToken() -> Promise<{enabled, url, token, expires_at}>   (the token route)
 *   loadClient(url, attempt) -> Promise<io> (socket.io-client's io, served by the sidecar at url;
 *                                            attempt counts the retries after a failed load, from 0)
 * so the web-client service and the repository's Node test (against a real
 * sidecar) run the same code.
 *
 * Token policy:
 * - A token is replaced `margin` before it expires (20% of its lifetime,
 *   between 1 and 60 seconds), so a fresh one is always at hand.
 * - Every (re)connection asks `auth` for the token; one that is already inside
 *   the margin (a laptop waking from sleep runs its timers late) is replaced first.
 * - The sidecar disconnects a socket whose token expired ("io server
 *   disconnect", which socket.io-client never retries by itself): we reconnect
 *   at once, with the fresh token.
 * - A refused connection ("Authentication error") fetches a new token and
 *   retries after a capped exponential delay (1 s doubling to 60 s); a failing
 *   token route is retried the same way. Transport failures are left to
 *   socket.io-client's own reconnection.
 * - A failed load of the sidecar's client script (sidecar down, blocked) is
 *   retried with the same capped delay, the whole time the page is open.
 * - Tokens are fetched ahead of expiry only while the socket is connected.
 *   With no socket (the client script is still loading) or a dropped one
 *   (socket.io-client is reconnecting), nothing is minted until a
 *   (re)connection asks `auth` for a token.
 * - `{enabled: false}` from the token route (not configured, or a user who may
 *   not see all leads): stay offline, retry nothing.
 */

export const AUTH_ERROR = "Authentication error";
/** Where the sidecar serves the official socket.io-client build matching its server. */
export const CLIENT_SCRIPT = "/client/socket.io.min.js";

/**
 * The client script's URL for load `attempt` (0 first). Odoo's loadJS keeps
 * the promise of every URL it was given, a rejected one included, and treats
 * a URL already in a <script> tag as loaded; a retry therefore asks for a URL
 * of its own (the sidecar ignores the query string).
 */
export function clientScriptUrl(sidecarUrl, attempt = 0) {
    const url = sidecarUrl.replace(/\/+$/, "") + CLIENT_SCRIPT;
    return attempt ? `${url}?retry=${attempt}` : url;
}
const SERVER_DISCONNECT = "io server disconnect";

/** Seconds before expiry at which a token of `lifetime` seconds is replaced. */
export function refreshMargin(lifetime) {
    return Math.min(60, Math.max(1, lifetime * 0.2));
}

export class RealtimeConnection {
    constructor({ fetchToken, loadClient, socketOptions = {}, log = console,
                  now = () => Date.now(), firstRetryDelay = 1000, maxRetryDelay = 60000 }) {
        this._fetchToken = fetchToken;
        this._loadClient = loadClient;
        this._socketOptions = socketOptions;
        this._log = log;
        this._now = now;
        this._firstRetryDelay = firstRetryDelay;
        this._maxRetryDelay = maxRetryDelay;
        this._retryDelay = firstRetryDelay;
        this._handlers = new Map();
        this._current = null;       // last answer of the token route
        this._margin = 1;
        this._pending = null;       // an in-flight refresh, shared by concurrent callers
        this._refreshTimer = null;
        this._retryTimer = null;
        this._wake = null;          // ends a _sleep() early (stop)
        this._stopped = false;
        this.socket = null;
        this.enabled = null;        // null until the token route answered
    }

    /** Call `handler(payload)` for each `event`; returns the function that unsubscribes. */
    on(event, handler) {
        if (!this._handlers.has(event)) {
            this._handlers.set(event, new Set());
        }
        this._handlers.get(event).add(handler);
        return () => this._handlers.get(event)?.delete(handler);
    }

    get connected() {
        return Boolean(this.socket && this.socket.connected);
    }

    /** Fetch a token and connect; resolves to false when the route says "disabled". */
    async start() {
        let first = await this._refresh();
        // enabled stays null while the route fails (network, restarting ERP): keep asking
        while (!first && this.enabled === null && !this._stopped) {
            await this._sleep(this._nextDelay());
            first = await this._refresh();
        }
        if (!first || this._stopped) {
            return false;
        }
        const io = await this._loadClientRetrying(first.url);
        if (!io) {
            return false;       // stopped while the script was failing to load
        }
        this.socket = io(first.url, {
            transports: ["websocket", "polling"],
            ...this._socketOptions,
            auth: (callback) => {
                this._validToken().then(
                    (token) => callback({ token }),
                    // connecting without a token is refused, which lands in
                    // connect_error and its retry
                    () => callback({})
                );
            },
        });
        this.socket.on("connect", () => {
            this._retryDelay = this._firstRetryDelay;
            this._scheduleRefresh();
        });
        this.socket.on("disconnect", (reason) => {
            // no socket, no token: the reconnection's auth fetches one if needed
            clearTimeout(this._refreshTimer);
            this._refreshTimer = null;
            if (reason === SERVER_DISCONNECT && !this._stopped) {
                this.socket.connect();
            }
        });
        this.socket.on("connect_error", (error) => {
            if (error && error.message === AUTH_ERROR) {
                const reason = error.data && error.data.reason;
                this._log.warn(`crm_realtime: sidecar refused the token (${reason}); retrying`);
                this._current = null;
                this._retry(() => this.socket.connect());
            }
        });
        this.socket.onAny((event, payload) => this._dispatch(event, payload));
        return true;
    }

    /** `loadClient`, retried after a capped delay until it works; null once stopped. */
    async _loadClientRetrying(url) {
        for (let attempt = 0; !this._stopped; attempt++) {
            try {
                const io = await this._loadClient(url, attempt);
                if (typeof io !== "function") {
                    throw new Error("the script did not define io()");
                }
                this._retryDelay = this._firstRetryDelay;
                return this._stopped ? null : io;
            } catch (error) {
                this._log.warn(`crm_realtime: cannot load the sidecar's client script from ${url}; retrying`,
                               error);
            }
            await this._sleep(this._nextDelay());
        }
        return null;
    }

    /** Wait `delay` ms; stop() ends the wait at once. */
    _sleep(delay) {
        return new Promise((resolve) => {
            this._wake = () => {
                clearTimeout(this._retryTimer);
                this._retryTimer = null;
                this._wake = null;
                resolve();
            };
            this._retryTimer = setTimeout(this._wake, delay);
        });
    }

    stop() {
        this._stopped = true;
        clearTimeout(this._refreshTimer);
        clearTimeout(this._retryTimer);
        if (this._wake) {
            this._wake();
        }
        if (this.socket) {
            this.socket.disconnect();
        }
    }

    _dispatch(event, payload) {
        for (const handler of this._handlers.get(event) || []) {
            try {
                handler(payload);
            } catch (error) {
                // one broken handler must not starve the others
                this._log.error(`crm_realtime: a handler of ${event} failed`, error);
            }
        }
    }

    _secondsLeft() {
        return this._current ? this._current.expires_at - this._now() / 1000 : -Infinity;
    }

    async _validToken() {
        if (this._secondsLeft() <= this._margin) {
            await this._refresh();
        }
        if (!this._current) {
            throw new Error("no token");
        }
        return this._current.token;
    }

    _refresh() {
        if (!this._pending) {
            this._pending = this._doRefresh().finally(() => {
                this._pending = null;
            });
        }
        return this._pending;
    }

    async _doRefresh() {
        clearTimeout(this._refreshTimer);
        let answer;
        try {
            answer = await this._fetchToken();
        } catch (error) {
            this._log.warn("crm_realtime: the token route failed; retrying", error);
            if (this.connected) {
                this._retry(() => this._refresh());
            }
            return null;
        }
        if (!answer || !answer.enabled) {
            this.enabled = false;
            this._current = null;
            return null;
        }
        this.enabled = true;
        this._current = answer;
        this._margin = refreshMargin(this._secondsLeft());
        if (this.connected) {
            this._scheduleRefresh();
        }
        return answer;
    }

    /** Fetch the next token `margin` before the current one expires (connected sockets only). */
    _scheduleRefresh() {
        clearTimeout(this._refreshTimer);
        this._refreshTimer = null;
        if (this._stopped || !this._current) {
            return;
        }
        const delay = Math.max(0, (this._current.expires_at - this._margin) * 1000 - this._now());
        this._refreshTimer = setTimeout(() => {
            this._refreshTimer = null;
            if (this.connected) {
                this._refresh();
            }
        }, delay);
    }

    _retry(action) {
        if (this._stopped || this._retryTimer) {
            return;
        }
        this._retryTimer = setTimeout(() => {
            this._retryTimer = null;
            if (!this._stopped) {
                action();
            }
        }, this._nextDelay());
    }

    _nextDelay() {
        const delay = this._retryDelay;
        this._retryDelay = Math.min(this._retryDelay * 2, this._maxRetryDelay);
        return delay;
    }
}
