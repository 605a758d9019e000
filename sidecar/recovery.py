"""Connection-state recovery backed by the journal, built to hold when everyone reconnects at once.

socket.io-client (v4.6+) implements the client half: the server's CONNECT
answer carries a ``pid``; every event carries an offset as its last argument;
after a non-deliberate disconnect the client reconnects sending
``{pid, offset, ...auth}``, and ``socket.recovered`` is true when the server
answers with the same ``pid``. python-socketio has no server half; the wire
(``wire.SocketServer``) adds the ``pid`` to the CONNECT answer, and this
module reads what the client missed from the journal, so recovery survives
restarts and works across replicas (offsets are journal positions, see
position.py).

Policy, as the client sees it:

* Reconnect with a ``pid`` (and an offset if it received an event): the token is
  checked again; if every row the client may have missed is still in the
  journal, the server answers with the same ``pid`` (``recovered === true``),
  sends the missed events of the client's organization/user, exactly once and
  each row's changes in order (across rows, in journal-id order, which may
  differ from the order the live stream sent them in), then the live stream.
* If rows it may have missed were pruned (older than
  ``SIDECAR_JOURNAL_RETENTION_HOURS``), or the offset is not one of ours, it gets
  a new ``pid`` (``recovered === false``) and only the live stream: the SPA
  refetches, as the contract tells it to on every ``connect``.
* A first connection may pass ``auth.since`` (a position from ``GET /cursor``,
  read before the SPA fetched its list) to receive everything committed after it.

How a catch-up converges whatever the write rate (the reconnect storm):

* At connect the socket is put on **hold**, synchronously, at the live
  position ``P`` (the listener's): from then on every live batch the sidecar
  dispatches is kept for it, whole, in dispatch order, instead of being sent.
  The replay then reads one fixed range, D(P) minus D(start), and cannot chase
  a moving position: what was committed meanwhile is in the kept batches.
  Once the replay is sent, the kept batches are sent, and the socket joins its
  rooms in the same step as the last kept batch is taken, so nothing is sent
  twice or skipped.
* Holds are **served together**: every socket held within a round's window
  (``ROUND_WINDOW``) is served by one journal read covering all their
  organizations, whatever the number of clients (each client's rows are then
  picked from it in Python). At most ``SIDECAR_RECOVERY_READERS`` rounds run
  at once; a long replay yields to the event loop every ``REPLAY_SLICE``
  deliveries.
* A hold keeps at most ``MAX_HELD`` deliveries. A client that cannot catch up
  within it has its transport closed: it reconnects and recovers again, as a
  slow consumer does. The same when the journal was pruned under it (it then
  gets ``recovered === false``).
* A journal read that fails (a dead pooled connection, a database restart) is
  retried on a fresh connection with backoff for up to
  ``listener_check + listener_timeout`` seconds before the transport is closed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import socketio

from .events import Change, Delivery, fill_gone, route
from .position import Position, Snapshot, new_pid, pid_position, valid_pid

from .logtag import tag

log = logging.getLogger('crm_realtime.recovery')

#: deliveries a recovering socket may have kept for it before it is dropped
MAX_HELD = 20_000

PRUNED_BELOW_SQL = 'SELECT "pruned_below"::text FROM "crm_realtime"."journal_state"'

# The rows that any of a round of recovering clients may have missed: their
# organizations (and users) since the oldest start of the round; each client's
# own rows are picked in Python (Hold.rows, Snapshot.visible).
# A compact row is expanded here as in journal.py: the payloads are the rows as
# they are now (a later journal row, if any, follows them in the replay).
ROUND_SQL = """
SELECT j.id, j.txid::text, j.kind, CASE WHEN x.part IS NULL THEN j.op WHEN j.op = 'updated_many' THEN 'updated' ELSE 'created' END,
       j.organization_id, j.user_id, coalesce(x.data, j.data), x.part
  FROM "crm_realtime"."journal" AS j
  LEFT JOIN LATERAL (SELECT e.part, e.data FROM "crm_realtime"."expand"(j.organization_id, j.data) AS e
                      WHERE j.op IN ('created_many', 'updated_many') OFFSET 0) AS x ON true
 WHERE j.txid >= %(xmin)s::text::xid8
   AND j.txid < pg_catalog.pg_snapshot_xmax(%(to)s::pg_snapshot)
   AND pg_catalog.pg_visible_in_snapshot(j.txid, %(to)s::pg_snapshot)
   AND j.organization_id = ANY(%(orgs)s)
   AND (j.user_id IS NULL OR j.user_id = ANY(%(users)s))
 ORDER BY j.id, x.part
"""

CURRENT_SNAPSHOT_SQL = 'SELECT pg_catalog.pg_current_snapshot()::text'

#: how long a round waits for more recovering clients to join it
ROUND_WINDOW = 0.05
#: replayed deliveries between two yields to the event loop
REPLAY_SLICE = 500


def still_in_journal(position: Position, pruned_below: str) -> bool:
    """Every row not in D(position) has a txid >= xmin(base): were any pruned?"""
    return Snapshot.parse(position.base).xmin >= int(pruned_below)


class Hold:
    """One recovering socket: where it starts, where its replay ends, what arrived meanwhile."""
    __slots__ = ('sid', 'organization_id', 'user_id', 'rooms', 'start', 'target', 'kept', 'done')

    def __init__(self, sid, organization_id, user_id, rooms, start: Position, target: str):
        self.sid = sid
        self.organization_id = organization_id
        self.user_id = user_id
        self.rooms = rooms
        self.start = start
        self.target = target
        self.kept: List[Tuple[Delivery, str]] = []
        self.done = False

    def rows(self, rows) -> List[Tuple[Change, str]]:
        """This client's rows of a group read, in replay order, each with its offset."""
        start, target = self.start, Snapshot.parse(self.target)
        base = Snapshot.parse(start.base)
        top = Snapshot.parse(start.top) if start.top is not None else None
        first, rest = [], []
        for row_id, txid, kind, op, org, user, data, part in rows:
            if user is not None and user != self.user_id:
                continue
            x = int(txid)
            if not target.visible(x) or base.visible(x):
                continue
            in_partial = top is not None and top.visible(x)
            if in_partial and start.has(row_id, part):
                continue
            (first if in_partial else rest).append(
                (row_id, in_partial, Change(row_id, kind, op, org, user, data, 0.0, part)))
        ordered = first + rest
        out = []
        last = len(ordered) - 1
        for i, (row_id, in_partial, change) in enumerate(ordered):
            if i == last:
                out.append((change, self.target))     # the client now has all of its rows in D(target)
                continue
            # inside a compact row, the offset says which of its parts the client has
            part = change.part if change.part is not None and ordered[i + 1][0] == row_id else None
            if in_partial:
                offset = Position(start.base, start.top, row_id, part).encode()
            else:
                offset = Position(start.horizon, self.target, row_id, part).encode()
            out.append((change, offset))
        return out


class Replayer:
    """Reads the journal for recovering clients through the shared pool."""

    def __init__(self, pool, metrics=None):
        self._pool = pool
        self._metrics = metrics
        self._cache: Dict[str, Tuple[float, str]] = {}         # shared reads: key -> (when, value)
        self._reading: Dict[str, asyncio.Future] = {}
        self.queries = 0            # journal reads made for recovery (bench/, /metrics)
        self._woken = 0.0

    async def pruned_below(self) -> str:
        """The journal's prune horizon, read at most once a second however many ask."""
        return await self._shared('pruned', PRUNED_BELOW_SQL, 1.0)

    async def current_snapshot(self) -> str:
        """The database's current snapshot, read at most ten times a second however many ask."""
        return await self._shared('snapshot', CURRENT_SNAPSHOT_SQL, 0.1)

    async def _shared(self, key: str, query: str, max_age: float) -> str:
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self._read_one(key, query))
            reading.add_done_callback(lambda _f, k=key: self._reading.pop(k, None))
        return await asyncio.shield(reading)

    async def _read_one(self, key: str, query: str) -> str:
        async with self._pool.connection() as conn:
            cur = await conn.execute(query)
            value = (await cur.fetchone())[0]
        self._count_query()
        self._cache[key] = (time.monotonic(), value)
        return value

    def _count_query(self) -> None:
        self.queries += 1
        if self._metrics is not None:
            self._metrics.recovery_reads.inc()

    async def available(self, position: Position) -> bool:
        return still_in_journal(position, await self.pruned_below())

    async def round(self, orgs: List[str], users: List[str], xmin: int, to: str):
        """(pruned_below, rows) read in one REPEATABLE READ transaction."""
        async with self._pool.connection() as conn:
            await conn.set_autocommit(False)
            try:
                async with conn.transaction():
                    await conn.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY')
                    cur = await conn.execute(PRUNED_BELOW_SQL)
                    pruned = (await cur.fetchone())[0]
                    cur = await conn.execute(ROUND_SQL, {
                        'xmin': str(xmin), 'to': to, 'orgs': orgs, 'users': users})
                    # lean rows whose row was gone: from the deleted row's "last" (events.fill_gone)
                    rows = fill_gone(await cur.fetchall(), 2, 3, 4, 6, 7)
            finally:
                await conn.set_autocommit(True)
        self._count_query()
        return pruned, rows

    async def wake_listeners(self) -> None:
        """NOTIFY our channel so every replica's listener reads the journal now (at most 4/s)."""
        now = time.monotonic()
        if now - self._woken < 0.25:
            return
        self._woken = now
        try:
            async with self._pool.connection(timeout=2) as conn:
                await conn.execute("SELECT pg_catalog.pg_notify('crm_realtime', '')")
        except Exception as exc:  # noqa: BLE001 - the periodic read still happens
            log.debug('cannot wake the listener: %s', exc.__class__.__name__)


class Recovery:
    """Decides who can be recovered, holds them, replays, releases them into their rooms."""

    def __init__(self, settings, metrics, fanout, replayer: Replayer, listener):
        self._metrics = metrics
        self._fanout = fanout
        self._replayer = replayer
        self._listener = listener
        self._wait_for_listener = settings.listener_check_seconds + settings.listener_timeout_seconds
        self._readers = settings.recovery_readers
        self._holds: Dict[str, Hold] = {}
        self._by_room: Dict[str, List[Hold]] = defaultdict(list)
        self._pending: List[Hold] = []              # held, waiting for a round
        self._rounds = 0                             # rounds running
        self._batch_after: Optional[str] = None     # the position a batch being dispatched ends at
        self._idle = asyncio.Event()                 # set while no batch is being dispatched
        self._idle.set()

    # ------------------------------------------------------------------ at connect

    async def start(self, sid, auth) -> Tuple[Optional[Position], str]:
        """(position to replay from or None, pid to announce) for a connecting socket."""
        # nobody connected: the listener dozes; move its position to now first,
        # so a fresh socket does not start where the last one left
        await self._listener.fresh()
        pid = auth.get('pid')
        if pid is not None:
            # An offset that is present but not one of ours means "cannot tell
            # what you have": never fall back to the pid's start, which would
            # replay what the client already received.
            offset = auth.get('offset')
            start = Position.decode(offset) if offset is not None else pid_position(pid)
            if start is None or not valid_pid(pid):
                self._metrics.recoveries.labels('invalid').inc()
                log.info('socket %s: recovery impossible (no usable offset)', tag(sid))
            elif await self._can_replay(start):
                self._metrics.recoveries.labels('ok').inc()
                return start, pid
            else:
                self._metrics.recoveries.labels('too_old').inc()
                log.info('socket %s: recovery impossible (events pruned or stream unavailable)', tag(sid))
            return None, new_pid(self._listener.position)
        since = auth.get('since')
        if since is not None:
            start = Position.decode(since)
            if start is None or not await self._can_replay(start):
                raise socketio.exceptions.ConnectionRefusedError(
                    'Cursor expired', {'reason': 'cursor_expired'})
            return start, new_pid(start.encode())
        return None, new_pid(self._listener.position)

    async def _can_replay(self, start: Position) -> bool:
        """Is every row the client may lack still in the journal, and has this replica read that far?

        A client may come from a replica that is ahead of this one: wait (a
        listener check plus a timeout at most) until this replica's listener
        has read as far. A position the database itself has not reached was
        made by no replica: refused at once.
        """
        horizon = Snapshot.parse(start.horizon)
        try:
            if not await self._replayer.available(start):
                return False
        except Exception as exc:  # noqa: BLE001 - the database is away: no recovery
            return self._check_failed(exc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_for_listener
        asked_database = False
        while True:
            live = self._listener.position
            if live is not None:
                if Snapshot.parse(live).sees_all_of(horizon):
                    return True
                if not asked_database:
                    asked_database = True
                    try:
                        current = await self._replayer.current_snapshot()
                    except Exception as exc:  # noqa: BLE001
                        return self._check_failed(exc)
                    if not Snapshot.parse(current).sees_all_of(horizon):
                        return False
                    await self._replayer.wake_listeners()
                    continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await self._listener.wait_advanced(min(remaining, 0.5))

    def _check_failed(self, exc: BaseException) -> bool:
        hint = self._listener.explain(exc)
        log.warning('recovery check failed (%s)%s', exc.__class__.__name__,
                    f': {hint}' if hint else '; the client gets recovered=false')
        return False

    def hold(self, sid, ident, rooms: List[str], start: Position) -> None:
        """Put a socket on hold at the live position; synchronous, like joining a room.

        Called after ``start`` said yes and before the CONNECT answer goes out.
        Live batches dispatched from now on are kept for it; the catch-up runs
        once the answer is sent. If a batch is being dispatched right now (its
        deliveries can await), the replay reaches the end of that batch
        instead, and none of it is kept.
        """
        target = self._batch_after if self._batch_after is not None else self._listener.position
        h = Hold(sid, ident.organization_id, ident.user_id, rooms, start, target)
        self._holds[sid] = h
        for room in rooms:
            self._by_room[room].append(h)
        self._pending.append(h)
        if self._rounds < self._readers:
            self._rounds += 1
            asyncio.ensure_future(self._serve())

    # ------------------------------------------------------------------ live batches

    def batch_started(self, batch: List[Tuple[Delivery, str]], after: str) -> None:
        """The live stream is about to dispatch ``batch`` (ending at ``after``): keep it for the holds."""
        self._batch_after = after
        self._idle.clear()
        if not self._holds:
            return
        touched = {}
        for delivery, offset in batch:
            for h in self._by_room.get(delivery.room, ()):
                h.kept.append((delivery, offset))
                touched[h.sid] = h
        for h in touched.values():
            if len(h.kept) > MAX_HELD:
                log.warning('socket %s: more than %d events arrived while it caught up; '
                            'closing its transport, it will recover again', tag(h.sid), MAX_HELD)
                self._metrics.recoveries.labels('overflow').inc()
                self._release(h)
                asyncio.ensure_future(self._fanout.drop_transport(h.sid))

    def batch_done(self) -> None:
        self._batch_after = None
        self._idle.set()

    def forget(self, sid) -> None:
        """The socket disconnected."""
        h = self._holds.get(sid)
        if h is not None:
            self._release(h)

    def _release(self, h: Hold) -> None:
        h.done = True
        self._holds.pop(h.sid, None)
        for room in h.rooms:
            holds = self._by_room.get(room)
            if holds is not None:
                try:
                    holds.remove(h)
                except ValueError:
                    pass
                if not holds:
                    del self._by_room[room]
        h.kept = []

    def holds_room(self, room: str) -> bool:
        return room in self._by_room

    @property
    def holding(self) -> int:
        return len(self._holds)

    # ------------------------------------------------------------------ catch-up

    async def _serve(self) -> None:
        """Rounds until nobody waits: every socket held meanwhile is served by one journal read."""
        try:
            while True:
                await asyncio.sleep(ROUND_WINDOW)     # let the reconnect storm join this round
                holds = [h for h in self._pending if not h.done]
                self._pending = []
                if not holds:
                    return
                await self._serve_round(holds)
        finally:
            self._rounds -= 1

    async def _serve_round(self, holds: List[Hold]) -> None:
        orgs = sorted({h.organization_id for h in holds})
        users = sorted({h.user_id for h in holds if h.user_id is not None})
        xmin = min(Snapshot.parse(h.start.base).xmin for h in holds)
        to = holds[-1].target       # the latest: holds are made in live-position order
        read = await self._read_round(orgs, users, xmin, to)
        if read is None:
            for h in holds:
                self._give_up(h, 'the journal could not be read')
            return
        pruned, rows = read
        by_org = defaultdict(list)
        for row in rows:
            by_org[row[4]].append(row)
        for h in holds:
            if h.done:
                continue
            if not still_in_journal(h.start, pruned):
                self._give_up(h, 'journal pruned during recovery')
                continue
            try:
                await self._replay(h, h.rows(by_org.get(h.organization_id, ())))
            except Exception:  # noqa: BLE001 - the client reconnects and recovers again
                log.exception('socket %s: recovery failed', tag(h.sid))
                self._give_up(h, 'recovery failed')

    async def _read_round(self, orgs, users, xmin, to):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_for_listener
        delay = 0.1
        while True:
            try:
                return await self._replayer.round(orgs, users, xmin, to)
            except Exception as exc:  # noqa: BLE001 - retried on a fresh connection
                if loop.time() + delay > deadline:
                    log.warning('recovery read failed (%s); giving up', exc.__class__.__name__)
                    return None
                log.info('recovery read failed (%s); retrying in %.1fs', exc.__class__.__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _send(self, h: Hold, items) -> bool:
        for n, (delivery, offset) in enumerate(items, 1):
            if h.done or not await self._fanout.deliver_to_sid(h.sid, delivery, offset):
                return False
            if n % REPLAY_SLICE == 0:
                await asyncio.sleep(0)      # a long replay does not stall everyone else
        return not h.done

    async def _replay(self, h: Hold, missed: List[Tuple[Change, str]]) -> None:
        if not await self._send(h, ((d, offset) for change, offset in missed for d in route(change))):
            return
        # What arrived while the replay was read and sent; the socket joins its
        # rooms in the same step as the last kept delivery is taken, and never
        # while a batch is being dispatched (it was kept whole for this socket:
        # joining half-way would send the rest of it twice).
        while not h.done:
            if not h.kept:
                if not self._idle.is_set():
                    await self._idle.wait()
                    continue
                self._release(h)
                self._fanout.join(h.sid, h.rooms)
                return
            kept, h.kept = h.kept, []
            if not await self._send(h, kept):
                return

    def _give_up(self, h: Hold, why: str) -> None:
        if h.done:
            return
        log.warning('socket %s: %s; closing its transport so that it reconnects', tag(h.sid), why)
        self._release(h)
        asyncio.ensure_future(self._fanout.drop_transport(h.sid))
