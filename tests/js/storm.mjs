// Many official socket.io-client sockets in one Node process, each recording what a
// contract SPA would see: connects (with socket.recovered), disconnect reasons, and
// the prospects it received, in order. Used by the reconnect-storm test and
// bench/reconnect_storm.py: one process holds a few hundred sockets.
//
//   STORM_CONFIG='{"url":..., "clients":[{"token":..., "transports":[...]}, ...]}' node storm.mjs
//
// Config: url; clients (one entry per socket: token, transports); concurrency (sockets
// opened at a time, default 50); reconnectionDelayMax (ms, default 2000).
// Stdout, JSON lines: {"type":"ready", connected} once every socket connected once;
// {"type":"report", sockets:[{connects:[recovered...], disconnects:[reason...],
// names:[firstname...], offsets_missing}]} on the stdin line "report".
// Stdin: "report", "exit", "drop <fraction>" (close that share of the sockets' transports as a
// network failure would; they reconnect and recover).
import { createInterface } from "node:readline";
import process from "node:process";
import { io } from "socket.io-client";

const config = JSON.parse(process.env.STORM_CONFIG || "{}");
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const clients = config.clients || [];
const concurrency = Math.max(1, config.concurrency || 50);
const state = clients.map(() => ({ connects: [], disconnects: [], names: [], errors: 0 }));
const sockets = [];
let connectedOnce = 0;

function open(i) {
  return new Promise((resolve) => {
    const c = clients[i];
    const s = io(config.url, {
      auth: { token: c.token }, transports: c.transports, forceNew: true,
      reconnectionDelay: 200, reconnectionDelayMax: config.reconnectionDelayMax || 2000,
    });
    sockets[i] = s;
    let first = true;
    s.on("connect", () => {
      state[i].connects.push(s.recovered);
      if (first) { first = false; connectedOnce += 1; resolve(); }
    });
    s.on("connect_error", () => { state[i].errors += 1; });
    s.on("disconnect", (reason) => { state[i].disconnects.push(reason); });
    s.on("prospect:created", (p) => { state[i].names.push(p.firstname); });
  });
}

async function main() {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, clients.length) }, async () => {
    while (next < clients.length) await open(next++);
  });
  await Promise.all(workers);
  out({ type: "ready", connected: connectedOnce });
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "report") out({ type: "report", sockets: state });
  else if (cmd.startsWith("drop ")) {
    const share = Number(cmd.slice(5));
    sockets.forEach((s, i) => { if (s && (i * 7919) % 1000 < share * 1000) s.io.engine.close(); });
  }
  else if (cmd === "exit") { sockets.forEach((s) => s && s.disconnect()); process.exit(0); }
});
main();
