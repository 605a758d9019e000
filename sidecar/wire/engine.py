"""engine.io and python-socketio, adjusted: light queues, spread pings, accepted websockets.

Private names relied on (versions in the package docstring):

* ``engineio.AsyncServer._async`` (the driver table, copied per server, never
  edited in place): its ``websocket`` entry is wrapped so that a websocket is
  known to the fan-out only once engine.io has accepted it for a session, and
  ``translate_request`` so that ``REMOTE_ADDR`` is the peer's address (the
  tornado driver writes 127.0.0.1; behind a proxy, tornado's ``xheaders``).
* ``engineio.async_drivers.tornado.WebSocket``: constructed with
  ``(handler, server)`` where ``handler`` is the bound
  ``AsyncSocket._websocket_handler`` of the session; called with the environ
  holding ``tornado.handler``; its ``send`` (replaced: same write, but the
  write's future is watched) and ``tornado_handler``.
* ``AsyncSocket.upgrading`` / ``upgraded`` / ``closed`` / ``closing`` / ``queue``,
  ``AsyncServer.sockets`` (sid -> socket).
* ``engineio.AsyncServer.ping_interval`` read on every ping sleep (made a property).
* ``engineio.AsyncServer.sockets`` assigned in ``__init__`` (a ``Sessions``
  here, see session.py) and ``_service_task`` (started by engine.io on the
  first connection, stopped by ``shutdown`` through ``service_task_event``):
  replaced by a sweep every few seconds.
* ``socketio.AsyncServer._engineio_server_class`` (which engine.io class to
  build) and ``_send_packet`` (every packet to a client passes there), and
  ``AsyncServer.environ`` (the handshake environ kept per session).
"""
from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import Dict

import engineio
import engineio.exceptions
import socketio
import tornado.websocket
from engineio.async_drivers import tornado as eio_tornado
from socketio import packet as sio_packet

from .queues import LightQueue
from .session import PingWheel, Sessions
from .rooms import RoomIndex

log = logging.getLogger('crm_realtime.wire')

#: each ping comes at a random point of the last PING_SPREAD of the interval
PING_SPREAD = 0.1

#: request headers still kept, for logs, once a socket is connected
KEPT_HEADERS = frozenset({'HTTP_HOST', 'HTTP_ORIGIN', 'HTTP_X_FORWARDED_FOR', 'HTTP_X_REAL_IP'})


def _translate_request(handler):
    environ = eio_tornado.translate_request(handler)
    environ['REMOTE_ADDR'] = handler.request.remote_ip or '?'
    return environ


class EngineIOServer(engineio.AsyncServer):
    """engine.io with light socket queues, spread pings, and a registry of accepted websockets.

    ``websockets`` maps an engine.io sid to the tornado handler engine.io is
    using for that session's websocket. A handler enters it only when
    engine.io runs its websocket handler for an existing session (so the sid
    was valid and, for an upgrade, the session was not already upgraded or
    upgrading), and leaves it when that handler ends. The fan-out writes
    directly only to a registered handler of an upgraded, non-upgrading
    session: a sid alone never yields anyone's events.

    Pings: engine.io pings a socket one interval after its last pong, so
    sockets that connected together (every client after a restart) stay in
    step for ever and are pinged in one burst. ``ping_interval`` is read as a
    fresh random value in [0.9, 1] x interval (never more than the client was
    told), so sockets drift apart.
    """

    def __init__(self, *args, **kwargs):
        self.pings = PingWheel()
        super().__init__(*args, **kwargs)
        self.websockets: Dict[str, object] = {}
        table = dict(self._async)
        table['websocket'] = _accepting_websocket(self, table['websocket'])
        table['translate_request'] = _translate_request
        self._async = table

    def create_queue(self, *args, **kwargs):
        return LightQueue(*args, **kwargs)

    @property
    def ping_interval(self) -> float:
        return self._ping_every * (1.0 - PING_SPREAD * random.random())

    @ping_interval.setter
    def ping_interval(self, value: float) -> None:
        self._ping_every = value

    @property
    def sockets(self):
        return self._sessions

    @sockets.setter
    def sockets(self, value) -> None:
        # engine.io assigns {} (start, disconnect-all); every session becomes a WireSocket
        self._sessions = value if isinstance(value, Sessions) else Sessions(value)

    async def _service_task(self):
        """engine.io's monitor, one sweep every ``ping_timeout`` (at most 30 s) instead of a wake-up per socket.

        engine.io's own sleeps ``ping_timeout / len(sockets)`` between two
        sockets (a ``wait_for`` every 2 ms with 10,000 sockets). The pings and
        their timeouts are the wheel's, and a websocket session leaves
        ``sockets`` when it ends; this only drops sessions that closed without
        leaving (a polling client that went away) and checks the timeout of
        any session the wheel does not hold (none, normally). A sweep touches
        every session (about 1 ms per 1,000), so it is rare: with 10,000 idle
        sockets, a sweep every 5 s was a third of the idle CPU left.
        """
        import asyncio
        import time
        self.service_task_event = event = self.create_event()
        every = max(0.5, min(30.0, self.ping_timeout))
        while not event.is_set():
            try:
                await asyncio.wait_for(event.wait(), timeout=every)
                break
            except asyncio.TimeoutError:
                pass
            except asyncio.CancelledError:
                break
            now = time.time()
            timeout = self.ping_timeout
            stale = []
            for sock in self.sockets.values():
                if sock.closed:
                    stale.append(sock)
                elif sock.last_ping and not sock.closing and now - sock.last_ping > timeout:
                    stale.append(sock)
            for sock in stale:
                if sock.closed:
                    if self.sockets.get(sock.sid) is sock:
                        del self.sockets[sock.sid]
                else:
                    sock._check_ping_timeout()

    async def close_all(self, timeout: float = 2.0) -> None:
        """Close every session at the engine.io level (shutdown): clients reconnect elsewhere.

        Not ``disconnect()``: it waits for each polling client to collect its
        CLOSE packet, which a client that went away never does.
        """
        for sock in list(self.sockets.values()):
            try:
                await asyncio.wait_for(sock.close(wait=False, abort=False), timeout)
            except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                pass


def _retrieve(future) -> None:
    if not future.cancelled():
        future.exception()      # a write to a websocket that closed meanwhile: nothing to do


def _accepting_websocket(server: EngineIOServer, base):
    class AcceptedWebSocket(base):
        """engine.io's websocket wrapper that registers the websocket it serves.

        ``send`` is the driver's, except that the write's future is watched:
        the driver drops it, so a websocket that closes with a packet in
        flight logged "Task exception was never retrieved" with a traceback.
        """

        async def send(self, message):
            try:
                written = self.tornado_handler.write_message(message, binary=isinstance(message, bytes))
            except tornado.websocket.WebSocketClosedError:
                raise engineio.exceptions.EngineIOError() from None
            written.add_done_callback(_retrieve)

        async def __call__(self, environ):
            handler = environ['tornado.handler']
            sock = getattr(self.handler, '__self__', None)
            sid = getattr(sock, 'sid', None)
            if sid is None or sock.upgrading:
                # a second websocket racing an upgrade in progress: refuse it
                handler.close(1008, 'session is already being upgraded')
                return
            server.websockets[sid] = handler
            try:
                await super().__call__(environ)
            finally:
                # an event-driven session (session.py) outlives this call; it leaves the
                # registry when its websocket closes (WireSocket.transport_closed)
                if getattr(handler, 'wire_socket', None) is not sock \
                        and server.websockets.get(sid) is handler:
                    del server.websockets[sid]
    return AcceptedWebSocket


_SESSION_WORDS = re.compile(r'\b(session|sid)\b(\s*[:=]?\s*)([A-Za-z0-9_-]{8,})')


class QuietLibraryLog(logging.Filter):
    """What engine.io and socketio log, without session ids and without tracebacks.

    engine.io logs "Invalid session <sid>" and "Unexpected HTTP request for
    session <sid>" at ERROR, and a malformed polling body as a traceback: a
    client could fill the log with tracebacks, and a sid in a log is a
    session for whoever reads it. Records keep their level; the sid becomes
    ``<hidden>`` and an exception becomes its class name.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = _SESSION_WORDS.sub(r'\1\2<hidden>', record.getMessage())
        if record.exc_info:
            exc = record.exc_info[1]
            message = f'{message} ({exc.__class__.__name__ if exc else "error"})'
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = message, ()
        return True


class SocketServer(socketio.AsyncServer):
    """``AsyncServer`` on our engine.io, whose CONNECT answer can carry a recovery ``pid``.

    Its rooms are kept by a ``RoomIndex`` (rooms.py) unless another
    manager is given: a disconnect then costs O(the sid's rooms), not O(all rooms).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('client_manager', RoomIndex())
        super().__init__(*args, **kwargs)
        quiet = QuietLibraryLog()
        for logger in {self.logger, self.eio.logger}:
            if not any(isinstance(f, QuietLibraryLog) for f in logger.filters):
                logger.addFilter(quiet)
        self._connect_pids = {}      # (eio_sid, namespace) -> pid to announce

    def _engineio_server_class(self):
        return EngineIOServer

    def announce_pid(self, sid: str, namespace: str, pid: str) -> None:
        """Called by the connect handler: the CONNECT sent for ``sid`` will carry ``pid``."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        self._connect_pids[(eio_sid, namespace or '/')] = pid

    def transport_open(self, sid: str, namespace: str) -> bool:
        """Whether ``sid``'s engine.io session is still open (its transport may have closed
        while a connect handler awaited: python-socketio then skips the disconnect handler)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        sock = self.eio.sockets.get(eio_sid) if eio_sid is not None else None
        return sock is not None and not sock.closed and not sock.closing

    async def _send_packet(self, eio_sid, pkt):
        # The only packet altered is the CONNECT answer, and only by adding "pid".
        if pkt.packet_type == sio_packet.CONNECT and isinstance(pkt.data, dict):
            pid = self._connect_pids.pop((eio_sid, pkt.namespace or '/'), None)
            if pid is not None:
                pkt.data = dict(pkt.data, pid=pid)
            environ = self.environ.get(eio_sid)
            if environ is not None:
                # trimmed by the connect handler; a dict does not shrink when keys go, a copy does
                self.environ[eio_sid] = dict(environ)
        elif pkt.packet_type in (sio_packet.CONNECT_ERROR, sio_packet.DISCONNECT):
            self._connect_pids.pop((eio_sid, pkt.namespace or '/'), None)
        await super()._send_packet(eio_sid, pkt)


def trim_environ(environ) -> None:
    """Drop what python-socketio would otherwise keep for the connection's whole life.

    The handshake's environ stays in ``AsyncServer.environ`` until disconnect:
    every request header (a browser's cookies for the CRM's own domain, an
    ``Authorization`` bearer token) and the request-body reader, for which
    engine.io's tornado driver defines a class per request (about 2.6 KB).
    None of it is read after the connect handler. (``tornado.handler`` stays:
    the driver answers the handshake request through it when it ends.)
    """
    environ.pop('wsgi.input', None)
    for key in [k for k in environ if k.startswith('HTTP_') and k not in KEPT_HEADERS]:
        del environ[key]
