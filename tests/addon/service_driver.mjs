// Runs the addon's RealtimeConnection (static/src/js/realtime_connection.js) under
// Node with the official socket.io-client, the way the Odoo web-client service does,
// and prints one JSON object per line for the Python test:
//   {type: "token", enabled, expires_at}  the token route answered
//   {type: "started", started}            start() resolved
//   {type: "connect"} | {type: "disconnect", reason} | {type: "event", name, payload}
//   {type: "log", level, message}         what the connection logged
// Environment: CONNECTION_MODULE (an .mjs copy of realtime_connection.js),
// SOCKET_IO_CLIENT_DIR (a directory whose node_modules has socket.io-client),
// TOKEN_URL (the stand-in for Odoo's /crm_realtime/token), LOAD_FAILURES (load attempts
// that fail, default 0: they fetch from a closed port), MAX_RETRY_DELAY (ms).
// Each load attempt fetches clientScriptUrl(url, attempt) from the sidecar, as loadJS
// would, and prints {type: "load", attempt, url, status}. "exit" on stdin stops it.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const { RealtimeConnection, clientScriptUrl } = await import(pathToFileURL(process.env.CONNECTION_MODULE).href);
const { io } = createRequire(`${process.env.SOCKET_IO_CLIENT_DIR}/package.json`)("socket.io-client");

const out = (obj) => process.stdout.write(JSON.stringify({ at: Date.now() / 1000, ...obj }) + "\n");
const logger = (level) => (message) => out({ type: "log", level, message: String(message) });

const connection = new RealtimeConnection({
    // Odoo's rpc service posts JSON and unwraps the result; this stand-in does the same.
    fetchToken: async () => {
        const response = await fetch(process.env.TOKEN_URL, { method: "POST", body: "{}" });
        const answer = await response.json();
        out({ type: "token", enabled: answer.enabled, expires_at: answer.expires_at ?? null });
        return answer;
    },
    loadClient: async (url, attempt) => {
        const failing = attempt < Number(process.env.LOAD_FAILURES || 0);
        const script = clientScriptUrl(failing ? "http://127.0.0.1:1" : url, attempt);
        try {
            const response = await fetch(script);
            const body = await response.text();
            out({ type: "load", attempt, url: script, status: response.status });
            if (!response.ok || !body.includes("io")) {
                throw new Error(`HTTP ${response.status}`);
            }
        } catch (error) {
            if (!failing) {
                out({ type: "load", attempt, url: script, status: null });
            } else {
                out({ type: "load", attempt, url: script, status: "refused" });
            }
            throw error;
        }
        return io;
    },
    socketOptions: { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 500 },
    log: { warn: logger("warn"), error: logger("error") },
    firstRetryDelay: 200,
    maxRetryDelay: Number(process.env.MAX_RETRY_DELAY || 60000),
});

for (const name of ["prospect:created", "prospect:updated", "prospect:deleted", "notification"]) {
    connection.on(name, (payload) => out({ type: "event", name, payload }));
}
const started = await connection.start().catch((error) => {
    out({ type: "log", level: "error", message: `start failed: ${error}` });
    return false;
});
if (connection.socket) {
    connection.socket.on("connect", () => out({ type: "connect" }));
    connection.socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));
}
out({ type: "started", started });

createInterface({ input: process.stdin }).on("line", (line) => {
    if (line.trim() === "exit") {
        connection.stop();
        process.exit(0);
    }
}).on("close", () => {
    connection.stop();
    process.exit(0);
});
