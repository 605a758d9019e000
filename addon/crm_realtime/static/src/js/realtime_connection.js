/** @odoo-module **/
/**
 * One Socket.IO connection to the crm-realtime sidecar, kept authenticated
 * with the short-lived tokens the ERP mints.
 *
 * It imports nothing from Odoo: it is handed
 *   fetchToken() -> Promise<{enabled, url, token, expires_at}>   (the token route)
 *   loadClient(url) -> Promise<io>          (socket.io-client's io, served by the sidecar at url)
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
 * - `{enabled: false}` from the token route (not configured, or a user who may
 *   not see all leads): stay offline, retry nothing.
 */

export const AUTH_ERROR = "Authentication error";
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
            await new Promise((resolve) => {
                this._retryTimer = setTimeout(resolve, this._nextDelay());
            });
            this._retryTimer = null;
            first = await this._refresh();
        }
        if (!first || this._stopped) {
            return false;
        }
        const io = await this._loadClient(first.url);
        if (this._stopped) {
            return false;
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
        });
        this.socket.on("disconnect", (reason) => {
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

    stop() {
        this._stopped = true;
        clearTimeout(this._refreshTimer);
        clearTimeout(this._retryTimer);
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
            if (this.socket) {
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
        const delay = Math.max(0, (answer.expires_at - this._margin) * 1000 - this._now());
        if (!this._stopped) {
            this._refreshTimer = setTimeout(() => this._refresh(), delay);
        }
        return answer;
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
