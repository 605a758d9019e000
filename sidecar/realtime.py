"""The Socket.IO side: authenticate, place sockets in rooms, deliver changes.

Connection policy:

* The token comes from the CONNECT packet's ``auth.token`` (browsers), else
  from an ``Authorization: Bearer`` header (other clients).
* A refused token never gets a session: the client's ``connect_error`` has
  ``message == "Authentication error"`` and ``data.reason`` a stable code
  (``token_expired``, ``invalid_signature``, ``algorithm_not_allowed``,
  ``missing_claim:organization_id``...). The log gets the precise reason,
  never the token.
* An accepted socket joins ``org:<org>`` and, when the token names a user,
  ``user:<org>:<user>``. When its token expires the server disconnects it
  (the client sees ``io server disconnect`` and, per the contract, reconnects
  with a fresh token).
* A reconnecting socket that can be recovered (see recovery.py) first gets
  what it missed, read from the journal, and joins its rooms only once it has
  caught up with the live stream, so nothing is sent twice or skipped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import List, Optional

import socketio

from .auth import CLIENT_MESSAGE, AuthError, TokenVerifier, bearer_token
from .events import Change, org_room, route, user_room
from .fanout import NAMESPACE, Fanout
from .position import Position, Snapshot, batch_offsets, new_pid, pid_position
from .recovery import RecoveringServer

log = logging.getLogger('crm_realtime.realtime')

#: How often a recovering socket may chase a moving live stream before giving up.
MAX_CATCH_UP_ROUNDS = 50


#: request headers still kept, for logs, once a socket is connected
KEPT_HEADERS = frozenset({'HTTP_HOST', 'HTTP_ORIGIN', 'HTTP_X_FORWARDED_FOR', 'HTTP_X_REAL_IP'})


def _trim_environ(environ) -> None:
    """Drop what python-socketio would otherwise keep for the connection's whole life.

    The handshake's environ stays in ``AsyncServer.environ`` until disconnect:
    every request header (a browser's cookies for the CRM's own domain, an
    ``Authorization`` bearer token) and the request-body reader, for which
    engine.io's tornado driver defines a class per request (about 2.6 KB).
    None of it is read after the connect handler.
    """
    environ.pop('wsgi.input', None)
    for key in [k for k in environ if k.startswith('HTTP_') and k not in KEPT_HEADERS]:
        del environ[key]


class Realtime:
    def __init__(self, settings, metrics):
        self.metrics = metrics
        self.verifier = TokenVerifier(settings)
        self.wait_for_listener = settings.listener_check_seconds + settings.listener_timeout_seconds
        cors = settings.cors_origins
        self.sio = RecoveringServer(
            async_mode='tornado',
            # '' (unset) means same origin only, which engine.io spells None
            # ([] would turn its origin check off altogether)
            cors_allowed_origins=cors if cors else None,
            transports=['polling', 'websocket'],
            ping_interval=settings.ping_interval_seconds, ping_timeout=settings.ping_timeout_seconds,
            logger=False, engineio_logger=False)
        self.fanout = Fanout(self.sio, metrics, max_backlog=settings.max_backlog_bytes)
        self.listener = None       # set by the app: gives the live position
        self.replayer = None       # set by the app: reads the journal for recovery
        self.wake_listener = None  # set by the app: async callable that NOTIFYs
        self._expiry = {}
        self._dispatching = False
        self.sio.on('connect', self._on_connect)
        self.sio.on('disconnect', self._on_disconnect)

    # ------------------------------------------------------------------ connect

    async def _on_connect(self, sid, environ, auth):
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get('token') or bearer_token(environ)
        try:
            ident = self.verifier.verify(token)
        except AuthError as exc:
            log.info('refused socket %s from %s: %s', sid, environ.get('REMOTE_ADDR', '?'), exc.detail)
            self.metrics.auth_refused.labels(exc.reason).inc()
            raise socketio.exceptions.ConnectionRefusedError(CLIENT_MESSAGE, exc.client_data())

        self.fanout.register_transport(sid, environ)
        _trim_environ(environ)
        start, pid = await self._recovery_start(sid, auth)
        await self.sio.save_session(sid, {'organization_id': ident.organization_id,
                                          'user_id': ident.user_id, 'exp': ident.expires_at})
        self.sio.announce_pid(sid, NAMESPACE, pid)
        if start is None:
            self._join(sid, ident)
        else:
            # after this handler returns the CONNECT answer is sent; then catch up
            asyncio.ensure_future(self._catch_up(sid, ident, start))
        delay = max(0.0, ident.expires_at - time.time())
        self._expiry[sid] = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._expire(sid)))
        self.metrics.connected_clients.inc()
        log.debug('socket %s joined organization %s as user %s', sid, ident.organization_id, ident.user_id)

    async def _recovery_start(self, sid, auth):
        """(position to replay from or None, pid to announce)."""
        live = self.listener.position if self.listener else None
        pid = auth.get('pid')
        if pid is not None:
            start = Position.decode(auth.get('offset')) or pid_position(pid)
            if start is None:
                self.metrics.recoveries.labels('invalid').inc()
                log.info('socket %s: recovery impossible (no usable offset)', sid)
            elif await self._can_replay(start):
                self.metrics.recoveries.labels('ok').inc()
                return start, pid
            else:
                self.metrics.recoveries.labels('too_old').inc()
                log.info('socket %s: recovery impossible (events pruned or stream unavailable)', sid)
            return None, new_pid(self.listener.position if self.listener else live)
        since = auth.get('since')
        if since is not None:
            start = Position.decode(since)
            if start is None or not await self._can_replay(start):
                raise socketio.exceptions.ConnectionRefusedError(
                    'Cursor expired', {'reason': 'cursor_expired'})
            return start, new_pid(start.encode())
        return None, new_pid(live)

    async def _can_replay(self, start: Position) -> bool:
        if self.replayer is None or self.listener is None:
            return False
        try:
            if not await self.replayer.available(start):
                return False
        except Exception as exc:  # noqa: BLE001 - the database is away: no recovery
            log.warning('recovery check failed: %s', exc.__class__.__name__)
            return False
        # This replica must have read at least as far as the client got (it may
        # have been connected to a replica that is ahead of us).
        horizon = Snapshot.parse(start.horizon)
        deadline = asyncio.get_running_loop().time() + self.wait_for_listener
        while True:
            live = self.listener.position
            if live is not None and Snapshot.parse(live).sees_all_of(horizon):
                return True
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            if self.wake_listener is not None:
                await self.wake_listener()
            await self.listener.wait_advanced(min(remaining, 0.5))

    def _join(self, sid, ident) -> None:
        # synchronous on purpose: no batch can be dispatched between the
        # caller's check of the live position and the socket entering its rooms
        manager = self.sio.manager
        manager.basic_enter_room(sid, NAMESPACE, org_room(ident.organization_id))
        if ident.user_id is not None:
            manager.basic_enter_room(sid, NAMESPACE, user_room(ident.organization_id, ident.user_id))

    async def _catch_up(self, sid, ident, start: Position) -> None:
        frm = start
        try:
            for _ in range(MAX_CATCH_UP_ROUNDS):
                to = self.listener.position
                complete, missed = await self.replayer.missed(
                    frm, to, ident.organization_id, ident.user_id)
                if sid not in self._expiry:
                    return                                  # gone meanwhile
                if not complete:
                    log.warning('socket %s: journal pruned during recovery; disconnecting', sid)
                    await self.sio.disconnect(sid)
                    return
                for change, offset in missed:
                    for delivery in route(change):
                        await self.fanout.deliver_to_sid(sid, delivery, offset)
                if self.listener.position == to and not self._dispatching:
                    self._join(sid, ident)
                    return
                frm = Position(to)
            log.warning('socket %s: could not catch up with the live stream; disconnecting', sid)
            await self.sio.disconnect(sid)
        except Exception:  # noqa: BLE001 - the client reconnects and is told recovered=false
            log.exception('socket %s: recovery failed; disconnecting', sid)
            await self.sio.disconnect(sid)

    # ------------------------------------------------------------------ lifecycle

    async def _on_disconnect(self, sid, *reason):
        handle = self._expiry.pop(sid, None)
        if handle is not None:
            handle.cancel()
            self.metrics.connected_clients.dec()

    async def _expire(self, sid):
        if self._expiry.pop(sid, None) is not None:
            self.metrics.connected_clients.dec()
            log.info('socket %s disconnected: token expired', sid)
            await self.sio.disconnect(sid)

    # ------------------------------------------------------------------ live stream

    async def on_changes(self, before: str, after: str, changes: List[Change]) -> None:
        """Deliver a batch read from the journal, in journal order, each with its offset."""
        self._dispatching = True
        try:
            offsets = batch_offsets(before, after, (c.id for c in changes))
            for change, offset in zip(changes, offsets):
                for delivery in route(change):
                    await self.fanout.deliver(delivery, offset)
            self.metrics.journal_lag.set(max(0.0, time.time() - changes[-1].recorded_at))
        finally:
            self._dispatching = False

    def cursor(self) -> Optional[str]:
        """The live position: a client that passes it as ``auth.since`` misses nothing after it."""
        return self.listener.position if self.listener else None
