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
* ``auth:refresh`` (client to server, acknowledged): a connected socket sends
  ``{token}`` before its token expires. The token is verified exactly like a
  connection token and accepted only for the same organization and user; the
  socket's expiry moves and the answer is ``{ok: true, expires_at}``. Anything
  else answers ``{ok: false, message: "Authentication error", reason}`` (the
  connection reasons, or ``identity_mismatch``) and the old expiry stands. The
  socket never leaves its rooms, so nothing is missed or repeated.
* A reconnecting socket that can be recovered is put on hold, gets what it
  missed from the journal, then what arrived meanwhile, then joins its rooms
  (recovery.py), so nothing is sent twice or skipped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import List, Optional

import socketio

from .auth import CLIENT_MESSAGE, AuthError, TokenVerifier, bearer_token
from .events import Change, org_room, room_of, route, user_room
from .expiry import Expiries
from .recovery import Recovery
from .wire import NAMESPACE, Fanout, SocketServer, check, trim_environ, websocket_handler

from .logtag import tag

log = logging.getLogger('crm_realtime.realtime')

#: client -> server event that moves a connected socket's expiry (see the module docstring)
AUTH_REFRESH = 'auth:refresh'


class Realtime:
    """Socket.IO for one sidecar, fed by ``listener`` and recovering through ``replayer``."""

    def __init__(self, settings, metrics, listener, replayer):
        self.metrics = metrics
        self.listener = listener
        self.verifier = TokenVerifier(settings)
        cors = settings.cors_origins
        self.sio = SocketServer(
            async_mode='tornado',
            # '' (unset) means same origin only, which engine.io spells None
            # ([] would turn its origin check off altogether)
            cors_allowed_origins=cors if cors else None,
            transports=['polling', 'websocket'],
            ping_interval=settings.ping_interval_seconds, ping_timeout=settings.ping_timeout_seconds,
            max_http_buffer_size=settings.max_http_buffer_bytes,
            logger=False, engineio_logger=False)
        self.wire_path = check(self.sio)
        self.fanout = Fanout(self.sio, metrics, max_backlog=settings.max_backlog_bytes,
                             direct=self.wire_path.direct)
        self.recovery = Recovery(settings, metrics, self.fanout, replayer, listener)
        self.websocket_handler = websocket_handler(
            self.sio, compression=settings.websocket_compression,
            max_body_bytes=settings.max_http_buffer_bytes, cors_origins=cors)
        self._expiry = Expiries(lambda sid: asyncio.ensure_future(self._expire(sid)))
        # who needs the live stream: organization (text id) -> sockets in its rooms
        # or on hold; the listener reads only these organizations' rows
        self._org_of = {}
        self._interested = {}
        listener.interest = self._interested.keys
        self.sio.on('connect', self._on_connect)
        self.sio.on('disconnect', self._on_disconnect)
        self.sio.on(AUTH_REFRESH, self._on_refresh)

    # ------------------------------------------------------------------ connect

    async def _on_connect(self, sid, environ, auth):
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get('token') or bearer_token(environ)
        try:
            ident = self.verifier.verify(token)
        except AuthError as exc:
            log.info('refused socket %s from %s: %s', tag(sid), environ.get('REMOTE_ADDR', '?'), exc.detail)
            self.metrics.auth_refused.labels(exc.reason).inc()
            raise socketio.exceptions.ConnectionRefusedError(CLIENT_MESSAGE, exc.client_data())

        trim_environ(environ)
        start, pid = await self.recovery.start(sid, auth)
        if not self.sio.transport_open(sid, NAMESPACE):
            # Gone while recovery.start awaited. python-socketio calls no disconnect handler
            # for a socket still connecting, so nothing may be set up for it: refusing makes
            # the library drop the sid's rooms (they would stay forever otherwise).
            self.recovery.forget(sid)
            log.debug('socket %s left while connecting', tag(sid))
            return False
        await self.sio.save_session(sid, {'organization_id': ident.organization_id,
                                          'user_id': ident.user_id, 'exp': ident.expires_at})
        self.sio.announce_pid(sid, NAMESPACE, pid)
        # synchronous from here to the CONNECT answer: no batch slips in between
        rooms = self._rooms(ident)
        if start is None:
            self.fanout.join(sid, rooms)
        else:
            self.recovery.hold(sid, ident, rooms, start)
        self._interest(sid, str(ident.organization_id))
        self._schedule_expiry(sid, ident.expires_at)
        self.metrics.connected_clients.inc()
        log.debug('socket %s joined organization %s as user %s', tag(sid), ident.organization_id, ident.user_id)

    def _interest(self, sid, org: str) -> None:
        """``sid`` is in (or held for) organization ``org``'s rooms: the listener reads its rows."""
        if self._org_of.get(sid) is not None:
            return
        self._org_of[sid] = org
        was_empty = not self._interested
        self._interested[org] = self._interested.get(org, 0) + 1
        if was_empty:
            self.listener.wake()

    def _lose_interest(self, sid) -> None:
        org = self._org_of.pop(sid, None)
        if org is None:
            return
        left = self._interested[org] - 1
        if left:
            self._interested[org] = left
        else:
            del self._interested[org]
            if not self._interested:
                self.listener.wake()       # nobody left: it can go dormant now

    @staticmethod
    def _rooms(ident) -> List[str]:
        rooms = [org_room(ident.organization_id)]
        if ident.user_id is not None:
            rooms.append(user_room(ident.organization_id, ident.user_id))
        return rooms

    def _schedule_expiry(self, sid, expires_at: float) -> None:
        self._expiry.set(sid, expires_at)

    async def _on_refresh(self, sid, data=None):
        data = data if isinstance(data, dict) else {}
        try:
            ident = self.verifier.verify(data.get('token'))
        except AuthError as exc:
            log.info('socket %s: token refresh refused: %s', tag(sid), exc.detail)
            self.metrics.auth_refused.labels(exc.reason).inc()
            return {'ok': False, 'message': CLIENT_MESSAGE, 'reason': exc.reason}
        session = await self.sio.get_session(sid)
        if sid not in self._expiry:
            return {'ok': False, 'message': CLIENT_MESSAGE, 'reason': 'token_expired'}
        if (ident.organization_id, ident.user_id) != (session['organization_id'], session['user_id']):
            log.info('socket %s: token refresh refused: the token is for organization %s user %s, '
                     'the socket for organization %s user %s', tag(sid), ident.organization_id,
                     ident.user_id, session['organization_id'], session['user_id'])
            self.metrics.auth_refused.labels('identity_mismatch').inc()
            return {'ok': False, 'message': CLIENT_MESSAGE, 'reason': 'identity_mismatch'}
        self._schedule_expiry(sid, ident.expires_at)
        session['exp'] = ident.expires_at
        await self.sio.save_session(sid, session)
        log.debug('socket %s: token refreshed, expires at %s', tag(sid), ident.expires_at)
        return {'ok': True, 'expires_at': ident.expires_at}

    # ------------------------------------------------------------------ lifecycle

    async def _on_disconnect(self, sid, *reason):
        self.recovery.forget(sid)
        self._lose_interest(sid)
        if self._expiry.pop(sid):
            self.metrics.connected_clients.dec()

    async def _expire(self, sid):
        # Expiries has dropped the expiry before calling back, so _on_disconnect does not
        # count this socket out a second time
        self.metrics.connected_clients.dec()
        self.recovery.forget(sid)
        self._lose_interest(sid)
        log.info('socket %s disconnected: token expired', tag(sid))
        await self.sio.disconnect(sid)

    # ------------------------------------------------------------------ live stream

    async def on_changes(self, before: str, after: str, changes: List[Change]) -> None:
        """Deliver a batch read from the journal, in journal order, each with its offset.

        Changes for rooms nobody is in (and nobody recovering will join) are
        skipped before any payload is built: the journal stays the truth, so a
        client that connects later gets them through recovery. The offset of
        an event is the position just after it (position.py), so skipping the
        batch's last change only means the client's offset advances with its
        next event.
        """
        listening, held = self.fanout.has_listeners, self.recovery.holds_room
        last = len(changes) - 1
        batch = []
        for i, change in enumerate(changes):
            room = room_of(change)
            if room is None or not (listening(room) or held(room)):
                continue
            if i == last:
                offset = after
            elif change.part is not None and changes[i + 1].id == change.id:
                # inside a compact row: which of its parts the client has
                offset = f'{before}~{after}~{change.id}.{change.part}'
            else:
                offset = f'{before}~{after}~{change.id}'
            for delivery in route(change):
                batch.append((delivery, offset))
        if batch:
            self.recovery.batch_started(batch, after)
            try:
                for delivery, offset in batch:
                    await self.fanout.deliver(delivery, offset)
            finally:
                self.recovery.batch_done()
        self.metrics.journal_lag.set(max(0.0, time.time() - changes[-1].recorded_at))

    async def fresh_cursor(self) -> Optional[str]:
        """``cursor()``, after a dormant listener (nobody connected) has moved to the current snapshot."""
        await self.listener.fresh()
        return self.cursor()

    def cursor(self) -> Optional[str]:
        """The live position (None while the journal cannot be read): a client that passes it as
        ``auth.since`` misses nothing after it."""
        return self.listener.position if self.listener.ready else None
