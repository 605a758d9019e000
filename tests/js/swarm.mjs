// Many official socket.io-client sockets in one Node process, for the scale-out
// tests (tests/test_scale_haproxy.py): each connects like the SPA's
// src/lib/socket.ts (auth: { token }, its own transports) and reconnects as
// socket.io-client does by default, with recovery. Nothing is reconnected by
// hand: a socket the server disconnects stays disconnected, and is counted.
//
// Configuration: the SWARM_CONFIG environment variable (JSON)
//   { url, clients: [{ token, transports }], reconnectionDelay, reconnectionDelayMax }
// Output, one JSON object per line:
//   {type: "ready", connected, errors}      once every socket connected or failed once
//   {type: "report", clients: [...]}        on the stdin line "report"; per socket:
//       { events: ["<event> <firstname or id>", ...], connects: [[recovered, transport], ...],
//         disconnects: [reason, ...], errors: [message, ...], connected }
//   {type: "status", connected, stranded, total}   on the stdin line "status"; stranded:
//       sockets the server disconnected, which socket.io-client does not reconnect
// The stdin line "exit" (or end of input) disconnects every socket and exits.
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const config = JSON.parse(process.env.SWARM_CONFIG || "{}");
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
if (!config.url || !Array.isArray(config.clients) || config.clients.length === 0) {
  console.error("swarm: SWARM_CONFIG needs url and clients");
  process.exit(2);
}

const records = config.clients.map(() => ({ events: [], connects: [], disconnects: [], errors: [] }));
const sockets = [];
let pendingFirst = config.clients.length;
let firstErrors = 0;

config.clients.forEach((client, i) => {
  const rec = records[i];
  let first = true;
  const socket = io(config.url, {
    auth: { token: client.token },
    transports: client.transports,
    forceNew: true,                       // one engine per socket: real, separate connections
    reconnectionDelay: config.reconnectionDelay ?? 200,
    reconnectionDelayMax: config.reconnectionDelayMax ?? 1000,
  });
  sockets.push(socket);
  const settle = (failed) => {
    if (!first) return;
    first = false;
    if (failed) firstErrors++;
    if (--pendingFirst === 0) out({ type: "ready", connected: config.clients.length - firstErrors, errors: firstErrors });
  };
  socket.on("connect", () => {
    rec.connects.push([socket.recovered, socket.io.engine.transport.name]);
    settle(false);
  });
  socket.on("connect_error", (error) => {
    rec.errors.push(error.message);
    if (rec.errors.length > 50) rec.errors.shift();
    settle(true);
  });
  socket.on("disconnect", (reason) => rec.disconnects.push(reason));
  socket.onAny((name, payload) => {
    const key = payload && (payload.firstname ?? payload.id);
    rec.events.push(`${name} ${key}`);
  });
});

function exit() {
  for (const s of sockets) s.disconnect();
  setTimeout(() => process.exit(0), 100).unref();
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "report") {
    out({ type: "report", clients: records.map((r, i) => ({ ...r, connected: sockets[i].connected })) });
  } else if (cmd === "status") {
    // stranded: disconnected by the server (no automatic reconnection follows)
    const stranded = records.filter((r, i) => !sockets[i].connected && !sockets[i].active).length;
    out({ type: "status", connected: sockets.filter((s) => s.connected).length, stranded, total: sockets.length });
  } else if (cmd === "exit") exit();
}).on("close", exit);
