// Load client for bench/fanout.py: one Node process, N official socket.io-client
// websocket connections, a receive timestamp for every event on every socket.
//
//   node bench/load_client.mjs config.json      (or LOAD_CONFIG='{"url":...}' node bench/load_client.mjs)
//
// Config (JSON):
//   url          server base URL (loopback only), e.g. "http://127.0.0.1:3001"
//   tokens       one JWT per connection (N = tokens.length)
//   expect       total events to wait for across all sockets (0: wait for "finish"/timeout)
//   timeout_s    hard limit for the whole run after connecting (default 120)
//   connect_timeout_s  limit for connecting all sockets (default 60)
//   concurrency  connections opened at a time (default 50)
//   transports   default ["websocket"]
//   local_address  optional loopback source address (e.g. "127.0.0.2"): more than one
//                port range of sockets to one server (bench/connections.py)
//   out          optional path: raw receive times are written there as
//                {"<event> <payload.id>": [ms, ms, ...], ...}
// It prints JSON lines on stdout:
//   {"type":"ready", connected, failed, errors, connect_ms}      once every socket answered
//   {"type":"summary", received, expected, duplicates, ...}      at the end, then exits
// Stdin: the line "finish" (or end of input) ends the run early; the summary is still printed.
// Timestamps are performance.timeOrigin + performance.now() in ms: the machine's
// wall clock, so they compare with Python's time.time() * 1000 on the same machine.
// Connections never reconnect: a dropped socket is counted, not hidden.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import process from "node:process";

// the official client installed for the tests (npm ci --prefix tests/js)
const require = createRequire(new URL("../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const config = process.argv[2] ? JSON.parse(readFileSync(process.argv[2], "utf8"))
                               : JSON.parse(process.env.LOAD_CONFIG || "{}");
const tokens = config.tokens || [];
const N = tokens.length;
const expect = config.expect || 0;
const transports = config.transports || ["websocket"];
const concurrency = Math.max(1, config.concurrency || 50);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const now = () => performance.timeOrigin + performance.now();
if (!config.url || N === 0) {
  console.error("load_client: config needs url and tokens");
  process.exit(2);
}

const sockets = [];
const times = new Map();          // "<event> <id>" -> [receive ms, ...]
const perSocket = new Array(N).fill(0);
const seen = Array.from({ length: N }, () => new Set());
const byEvent = {};
let received = 0;
let duplicates = 0;
let disconnects = 0;
let firstAt = null;
let lastAt = null;
let finished = false;

function connectOne(i) {
  return new Promise((resolve) => {
    const socket = io(config.url, {
      auth: { token: tokens[i] },
      transports,
      forceNew: true,            // one engine per socket: N real connections, not multiplexed
      reconnection: false,
      timeout: (config.connect_timeout_s || 60) * 1000,
      ...(config.local_address ? { localAddress: config.local_address } : {}),
    });
    sockets[i] = socket;
    socket.onAny((name, payload) => {
      const t = now();
      const key = `${name} ${payload && payload.id}`;
      let list = times.get(key);
      if (list === undefined) { list = []; times.set(key, list); }
      list.push(t);
      if (seen[i].has(key)) duplicates++; else seen[i].add(key);
      perSocket[i]++;
      byEvent[name] = (byEvent[name] || 0) + 1;
      received++;
      if (firstAt === null) firstAt = t;
      lastAt = t;
      if (expect && received >= expect) finish("complete");
    });
    socket.once("connect", () => resolve(null));
    socket.once("connect_error", (err) => resolve(err.message + (err.data ? ` ${JSON.stringify(err.data)}` : "")));
    socket.on("disconnect", (reason) => { if (!finished) disconnects++; });
  });
}

async function connectAll() {
  const t0 = now();
  const errors = [];
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const i = next++;
      const err = await connectOne(i);
      if (err) errors.push(err);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, N) }, worker));
  return { connected: N - errors.length, failed: errors.length,
           errors: [...new Set(errors)].slice(0, 5), connect_ms: Math.round(now() - t0) };
}

function finish(why) {
  if (finished) return;
  finished = true;
  const cpu = process.cpuUsage();
  const counts = perSocket.slice().sort((a, b) => a - b);
  if (config.out) writeFileSync(config.out, JSON.stringify(Object.fromEntries(times)));
  out({
    type: "summary", why, received, expected: expect, duplicates, disconnects,
    by_event: byEvent, distinct_events: times.size,
    per_socket_min: counts[0], per_socket_max: counts[counts.length - 1],
    first_ms: firstAt, last_ms: lastAt,
    events_per_s: firstAt !== null && lastAt > firstAt ? Math.round(received / ((lastAt - firstAt) / 1000)) : null,
    client_cpu_s: (cpu.user + cpu.system) / 1e6,
    client_rss_kb: Math.round(process.memoryUsage().rss / 1024),
  });
  for (const s of sockets) if (s) s.disconnect();
  setTimeout(() => process.exit(0), 100).unref();
}

createInterface({ input: process.stdin })
  .on("line", (line) => { if (line.trim() === "finish") finish("finish"); })
  .on("close", () => finish("stdin closed"));   // the driver went away: do not linger

const ready = await connectAll();
out({ type: "ready", ...ready });
setTimeout(() => finish("timeout"), (config.timeout_s || 120) * 1000).unref();
// keep the process alive until finish() even if every socket is gone
const keepAlive = setInterval(() => { if (finished) clearInterval(keepAlive); }, 1000);
