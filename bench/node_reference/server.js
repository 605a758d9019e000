// A minimal Node socket.io v4 server doing the sidecar's job, as a yardstick for
// bench/fanout.py. Not a product: it exists so that "how far is the Python sidecar
// from a plain Node server" is measured here instead of guessed.
//
//   npm ci --prefix bench/node_reference
//   NODE_REF_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/crm \
//   NODE_REF_JWT_SECRET=... NODE_REF_PORT=3002 node bench/node_reference/server.js
//
// What it does, like the sidecar:
//   * LISTEN crm_realtime with `pg` on one dedicated connection; each NOTIFY (and a
//     read every 5 s, in case one was missed) reads the new journal rows;
//   * maps each row to the same event, payload and room as sidecar/events.py and
//     emits it with io.to(room).emit() (socket.io encodes a broadcast once);
//   * verifies the HS256 JWT from auth.token with `jsonwebtoken` (exp required),
//     refuses with connect_error "Authentication error" + data.reason, joins
//     org:<org> and user:<org>:<user>, disconnects the socket when its token expires;
//   * GET /healthz, GET /readyz (200 once LISTEN is up).
// What it does NOT do (so the comparison flatters it, if anything):
//   * it reads the journal with a plain `id > last` watermark. Journal ids are taken
//     inside the writing transaction, so a transaction that commits after one with a
//     larger id is skipped. The sidecar reads by snapshot and never skips one;
//   * no journal-backed recovery, no /cursor, no metrics, no reconnect of the LISTEN
//     connection (it exits on a database error). NODE_REF_RECOVERY=1 turns on
//     socket.io's own in-memory connectionStateRecovery, which, like the sidecar,
//     appends an offset to every event (it does not survive a restart).
// It binds 127.0.0.1 only.
import { createServer } from "node:http";
import process from "node:process";
import jwt from "jsonwebtoken";
import pg from "pg";
import { Server } from "socket.io";

const env = process.env;
const DATABASE_URL = env.NODE_REF_DATABASE_URL;
const SECRET = env.NODE_REF_JWT_SECRET;
const PORT = Number(env.NODE_REF_PORT || 3002);
const HOST = "127.0.0.1";
const RECOVERY = env.NODE_REF_RECOVERY === "1";
const CHECK_MS = 5000;
if (!DATABASE_URL || !SECRET) {
  console.error("node-reference: NODE_REF_DATABASE_URL and NODE_REF_JWT_SECRET are required");
  process.exit(2);
}

// ---- the same mapping as sidecar/events.py ------------------------------------
const PROSPECT_FIELDS = ["id", "firstname", "lastname", "email", "phone", "status",
                         "source", "notes", "created_at", "updated_at"];
const NOTIFICATION_FIELDS = ["id", "type", "title", "message", "meta", "created_at"];
const orgRoom = (org) => `org:${org}`;
const userRoom = (org, user) => `user:${org}:${user}`;
const idText = (v) => (v === null || v === undefined ? null : String(v));

function pick(data, fields) {
  const out = {};
  for (const f of fields) out[f] = data[f] === undefined ? null : data[f];
  out.id = idText(out.id);
  return out;
}

function meta(value) {
  if (typeof value === "string") {
    try { value = JSON.parse(value); } catch { return { value }; }
  }
  if (value === null || value === undefined) return {};
  return typeof value === "object" && !Array.isArray(value) ? value : { value };
}

function route(row) {
  if (row.kind === "prospect") {
    const room = orgRoom(row.organization_id);
    if (row.op === "deleted") return [["prospect:deleted", { id: idText(row.data.id) }, room]];
    return [[`prospect:${row.op}`, pick(row.data, PROSPECT_FIELDS), room]];
  }
  if (row.kind === "notification" && row.op === "created") {
    const room = row.user_id !== null ? userRoom(row.organization_id, row.user_id)
                                      : orgRoom(row.organization_id);
    const payload = pick(row.data, NOTIFICATION_FIELDS);
    payload.meta = meta(payload.meta);
    return [["notification", payload, room]];
  }
  return [];
}

// ---- HTTP + socket.io ------------------------------------------------------------
let ready = false;
const http = createServer((req, res) => {
  const path = (req.url || "").split("?")[0];
  res.setHeader("Cache-Control", "no-store");
  res.setHeader("Content-Type", "application/json");
  if (path === "/healthz") { res.end('{"status":"ok"}'); return; }
  if (path === "/readyz") {
    res.statusCode = ready ? 200 : 503;
    res.end(ready ? '{"status":"ready"}' : '{"status":"not ready"}');
    return;
  }
  res.statusCode = 404;
  res.end('{"error":"not found"}');
});

const io = new Server(http, {
  transports: ["polling", "websocket"],
  serveClient: false,
  ...(RECOVERY ? { connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 } } : {}),
});

function refuse(reason) {
  const err = new Error("Authentication error");
  err.data = { reason };
  return err;
}

function reasonOf(err) {
  if (err.name === "TokenExpiredError") return "token_expired";
  if (err.name === "NotBeforeError") return "token_not_yet_valid";
  if (err.message === "invalid signature") return "invalid_signature";
  if (err.message === "jwt malformed" || err.message === "invalid token") return "malformed_token";
  if (err.message === "invalid algorithm") return "algorithm_not_allowed";
  return "invalid_token";
}

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  if (!token) return next(refuse("missing_token"));
  let claims;
  try {
    claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
  } catch (err) {
    return next(refuse(reasonOf(err)));
  }
  if (typeof claims.exp !== "number") return next(refuse("missing_claim:exp"));
  if (claims.organization_id === undefined || claims.organization_id === null) {
    return next(refuse("missing_claim:organization_id"));
  }
  socket.data.org = String(claims.organization_id);
  socket.data.user = claims.sub === undefined || claims.sub === null ? null : String(claims.sub);
  socket.data.exp = claims.exp;
  next();
});

io.on("connection", (socket) => {
  const { org, user, exp } = socket.data;
  if (!socket.recovered) {
    socket.join(orgRoom(org));
    if (user !== null) socket.join(userRoom(org, user));
  }
  // setTimeout takes at most 2^31-1 ms; a longer-lived token is re-armed
  const arm = () => {
    const left = exp * 1000 - Date.now();
    return setTimeout(() => (left > 2 ** 31 - 1 ? (timer = arm()) : socket.disconnect(true)),
                      Math.min(Math.max(left, 0), 2 ** 31 - 1));
  };
  let timer = arm();
  socket.on("disconnect", () => clearTimeout(timer));
});

// ---- LISTEN + journal read (id > last) ---------------------------------------------
const READ_SQL = `SELECT id, kind, op, organization_id, user_id, data
                    FROM crm_realtime.journal WHERE id > $1 ORDER BY id`;
const db = new pg.Client({ connectionString: DATABASE_URL, application_name: "node-reference listener" });
let last = "0";
let reading = false;
let again = false;

async function readJournal() {
  if (reading) { again = true; return; }
  reading = true;
  try {
    do {
      again = false;
      const { rows } = await db.query({ name: "read-journal", text: READ_SQL, values: [last] });
      for (const row of rows) {
        for (const [event, payload, room] of route(row)) io.to(room).emit(event, payload);
        last = row.id;
      }
    } while (again);
  } finally {
    reading = false;
  }
}

function fail(err) {
  console.error(`node-reference: database error: ${err.message}`);
  process.exit(1);
}

db.on("error", fail);
db.on("notification", () => readJournal().catch(fail));

async function main() {
  await db.connect();
  await db.query("LISTEN crm_realtime");
  // the lock a waiting listener holds (sql/install.sql): the triggers notify only while one does
  await db.query("SELECT pg_advisory_lock_shared(1668443506, 1)");
  const { rows } = await db.query("SELECT coalesce(max(id), 0)::text AS id FROM crm_realtime.journal");
  last = rows[0].id;
  setInterval(() => readJournal().catch(fail), CHECK_MS).unref();
  await new Promise((resolve) => http.listen(PORT, HOST, resolve));
  ready = true;
  console.log(JSON.stringify({ listening: `http://${HOST}:${http.address().port}`, recovery: RECOVERY }));
}

function shutdown() {
  ready = false;
  io.close();
  db.end().finally(() => process.exit(0));
}
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);

main().catch(fail);
