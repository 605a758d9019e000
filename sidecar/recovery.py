"""Connection-state recovery backed by the journal.

socket.io-client (v4.6+) implements the client half: the server's CONNECT
answer carries a ``pid``; every event carries an offset as its last argument;
after a non-deliberate disconnect the client reconnects sending
``{pid, offset, ...auth}``, and ``socket.recovered`` is true when the server
answers with the same ``pid``. python-socketio has no server half; this module
adds it without touching the library: ``RecoveringServer`` only adds the
``pid`` to the CONNECT packet our connect handler asked for, and ``Replayer``
reads what the client missed from the journal (so it survives restarts and
works across replicas: offsets are journal positions, see position.py).

Policy, as the client sees it:

* Reconnect with a ``pid`` (and an offset if it received an event): the token is
  checked again; if every row the client may have missed is still in the
  journal, the server answers with the same ``pid`` (``recovered === true``),
  sends the missed events of the client's organization/user in the order the
  sidecar emits them, exactly once, then the live stream.
* If rows it may have missed were pruned (older than
  ``SIDECAR_JOURNAL_RETENTION_HOURS``), or the offset is not one of ours, it gets
  a new ``pid`` (``recovered === false``) and only the live stream: the SPA
  refetches, as the contract tells it to on every ``connect``.
* A first connection may pass ``auth.since`` (a position from ``GET /cursor``,
  read before the SPA fetched its list) to receive everything committed after it.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import socketio
from socketio import packet as sio_packet

from .events import Change
from .position import Position, Snapshot

log = logging.getLogger('crm_realtime.recovery')


class RecoveringServer(socketio.AsyncServer):
    """``AsyncServer`` whose CONNECT answer can carry a connection-state-recovery ``pid``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connect_pids = {}      # (eio_sid, namespace) -> pid to announce

    def _engineio_server_class(self):
        from .transport import EngineIOServer
        return EngineIOServer

    def announce_pid(self, sid: str, namespace: str, pid: str) -> None:
        """Called by the connect handler: the CONNECT sent for ``sid`` will carry ``pid``."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        self._connect_pids[(eio_sid, namespace or '/')] = pid

    async def _send_packet(self, eio_sid, pkt):
        # The only packet altered is the CONNECT answer, and only by adding "pid".
        if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
            pid = self._connect_pids.pop((eio_sid, pkt.namespace or '/'), None)
            if pid is not None:
                pkt.data = dict(pkt.data, pid=pid)
        elif pkt.packet_type in (sio_packet.CONNECT_ERROR, sio_packet.DISCONNECT):
            self._connect_pids.pop((eio_sid, pkt.namespace or '/'), None)
        await super()._send_packet(eio_sid, pkt)


PRUNED_BELOW_SQL = 'SELECT "pruned_below"::text FROM "crm_realtime"."journal_state"'

# Rows of one organization (and user) in D(to) minus D(from); see position.py.
REPLAY_SQL = """
SELECT j.id, j.kind, j.op, j.organization_id, j.user_id, j.data,
       (%(from_top)s::pg_snapshot IS NOT NULL
        AND pg_catalog.pg_visible_in_snapshot(j.txid, %(from_top)s::pg_snapshot)) AS in_partial
  FROM "crm_realtime"."journal" AS j
 WHERE j.txid >= pg_catalog.pg_snapshot_xmin(%(from_base)s::pg_snapshot)
   AND NOT pg_catalog.pg_visible_in_snapshot(j.txid, %(from_base)s::pg_snapshot)
   AND NOT (%(from_top)s::pg_snapshot IS NOT NULL
            AND pg_catalog.pg_visible_in_snapshot(j.txid, %(from_top)s::pg_snapshot)
            AND j.id <= %(from_id)s)
   AND pg_catalog.pg_visible_in_snapshot(j.txid, %(to)s::pg_snapshot)
   AND j.organization_id = %(org)s
   AND (j.user_id IS NULL OR j.user_id = %(user)s)
 ORDER BY in_partial DESC, j.id
"""


def still_in_journal(position: Position, pruned_below: str) -> bool:
    """Every row not in D(position) has a txid >= xmin(base): were any pruned?"""
    return Snapshot.parse(position.base).xmin >= int(pruned_below)


class Replayer:
    """Reads missed rows for one client from the journal through a small pool."""

    def __init__(self, pool):
        self._pool = pool

    async def available(self, position: Position) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(PRUNED_BELOW_SQL)
            return still_in_journal(position, (await cur.fetchone())[0])

    async def missed(self, start: Position, to: str, organization_id: str,
                     user_id: Optional[str]) -> Tuple[bool, List[Tuple[Change, str]]]:
        """(still complete?, [(change, offset)...]) for rows in D(to) minus D(start).

        Read in one REPEATABLE READ transaction, so a concurrent prune is either
        entirely visible (and reported) or not at all.
        """
        async with self._pool.connection() as conn:
            await conn.set_autocommit(False)
            try:
                async with conn.transaction():
                    await conn.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY')
                    cur = await conn.execute(PRUNED_BELOW_SQL)
                    if not still_in_journal(start, (await cur.fetchone())[0]):
                        return False, []
                    cur = await conn.execute(REPLAY_SQL, {
                        'from_base': start.base, 'from_top': start.top,
                        'from_id': start.last_id, 'to': to,
                        'org': organization_id, 'user': user_id})
                    rows = await cur.fetchall()
            finally:
                await conn.set_autocommit(True)
        out = []
        for i, (row_id, kind, op, org, user, data, in_partial) in enumerate(rows):
            change = Change(row_id, kind, op, org, user, data)
            if i == len(rows) - 1:
                offset = to                 # the client now has all of its rows in D(to)
            elif in_partial:
                offset = Position(start.base, start.top, row_id).encode()
            else:
                offset = Position(start.horizon, to, row_id).encode()
            out.append((change, offset))
        return True, out
