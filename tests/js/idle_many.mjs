// N official socket.io-client websockets held open and idle, for tests/wire/test_sessions.py.
//   CLIENT_CONFIG='{"url":"http://127.0.0.1:PORT","tokens":["...", ...]}' node idle_many.mjs
// Prints {"type":"ready","connected":n,"failed":m} once every socket answered, then holds
// them until stdin ends or says "exit"; never reconnects.
import { createInterface } from "node:readline";
import process from "node:process";
import { io } from "socket.io-client";

const config = JSON.parse(process.env.CLIENT_CONFIG || "{}");
const tokens = config.tokens || [];
const sockets = [];
let connected = 0;
let failed = 0;
await Promise.all(tokens.map((token) => new Promise((resolve) => {
  const s = io(config.url, { auth: { token }, transports: ["websocket"], forceNew: true,
                             reconnection: false });
  sockets.push(s);
  s.once("connect", () => { connected++; resolve(); });
  s.once("connect_error", () => { failed++; resolve(); });
})));
process.stdout.write(JSON.stringify({ type: "ready", connected, failed }) + "\n");
const done = () => { for (const s of sockets) s.disconnect(); setTimeout(() => process.exit(0), 50); };
createInterface({ input: process.stdin })
  .on("line", (line) => { if (line.trim() === "exit") done(); })
  .on("close", done);
