// A socket.io-client (the official one) driven over stdin/stdout by the Python tests.
//
// Configuration comes from the CLIENT_CONFIG environment variable (JSON):
//   { url, token, transports, autoConnect, auth }
// It connects exactly like the SPA's src/lib/socket.ts (auth: { token }) and
// prints one JSON object per line for everything it observes:
//   {type: "connect", id, recovered} | {type: "event", name, args}
//   {type: "connect_error", message, data} | {type: "disconnect", reason}
// Commands, one JSON object per line on stdin:
//   {cmd: "drop"}        close the transport as a network failure would (client reconnects)
//   {cmd: "hold"}        the same, but stay offline until "resume"
//   {cmd: "resume", url} come back (optionally to another server: another replica)
//   {cmd: "disconnect"}  socket.disconnect()
//   {cmd: "connect"}     socket.connect()
//   {cmd: "auth", token} replace auth.token for the next (re)connection (with
//                        config.authFunction, the token the auth function hands out)
//   {cmd: "emit", event, data}  emit with an acknowledgement; prints {type: "ack", event,
//                        error, response}
//   {cmd: "pause"}       stop reading the websocket (a slow reader: the server's kernel
//                        buffer fills up), until {cmd: "unpause"}
//   {cmd: "exit"}
// With config.digest, a string field over 64 characters is printed as "<length>:<sha1 hex>".
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { createHash } from "node:crypto";

const config = JSON.parse(process.env.CLIENT_CONFIG || "{}");
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// config.authFunction: the recommended form of the contract's connectSocket, where
// auth is a function socket.io-client calls on every (re)connection
let currentToken = config.token;
const socket = io(config.url, {
  auth: config.authFunction ? (cb) => cb({ token: currentToken })
                            : (config.auth || { token: config.token }),
  transports: config.transports || ["websocket", "polling"],
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  autoConnect: config.autoConnect !== false,
});

socket.on("connect", () => out({ type: "connect", id: socket.id, recovered: socket.recovered,
                                 transport: socket.io.engine.transport.name }));
socket.on("connect_error", (error) => out({ type: "connect_error", message: error.message,
                                            data: error.data ?? null }));
socket.on("disconnect", (reason) => {
  out({ type: "disconnect", reason });
  // what the SPA contract does: the server closed the session, reconnect by hand
  if (config.spa && reason === "io server disconnect") socket.connect();
});
const digest = (value) => {
  if (!config.digest || value === null || typeof value !== "object" || Array.isArray(value)) return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) =>
    [k, typeof v === "string" && v.length > 64
      ? `${v.length}:${createHash("sha1").update(v).digest("hex")}` : v]));
};
socket.onAny((name, ...args) => out({ type: "event", name, args: args.map(digest) }));

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const msg = JSON.parse(line);
  if (msg.cmd === "drop") socket.io.engine.close();
  else if (msg.cmd === "hold") { socket.io.reconnection(false); socket.io.engine.close(); }
  else if (msg.cmd === "resume") {
    if (msg.url) socket.io.uri = msg.url;
    socket.io.reconnection(true);
    socket.connect();
  }
  else if (msg.cmd === "disconnect") socket.disconnect();
  else if (msg.cmd === "connect") socket.connect();
  else if (msg.cmd === "auth") {
    currentToken = msg.token;
    if (typeof socket.auth !== "function") socket.auth = { ...socket.auth, token: msg.token };
  }
  else if (msg.cmd === "emit") {
    socket.timeout(5000).emit(msg.event, msg.data, (err, response) =>
      out({ type: "ack", event: msg.event, error: err ? String(err.message || err) : null,
            response: response ?? null }));
  }
  else if (msg.cmd === "pause") socket.io.engine.transport.ws.pause();
  else if (msg.cmd === "unpause") socket.io.engine.transport.ws.resume();
  else if (msg.cmd === "exit") { socket.disconnect(); process.exit(0); }
}).on("close", () => { socket.disconnect(); process.exit(0); });
