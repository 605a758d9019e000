"""engine.io sessions that hold no task and no timer of their own while idle.

engine.io's ``AsyncSocket`` on a websocket keeps, for the connection's whole
life: the request task that accepted it (about eight coroutine frames and the
handshake environ), a reader loop with a task and a ``wait_for`` timer per
message wait, a writer task waiting on the queue with another ``wait_for``
timer, and a ping task asleep on its own timer: five tasks and three timers
per idle socket. ``WireSocket`` is the same session, event-driven:

* **Reading**: tornado's ``on_message`` hands each message to ``feed``. A PONG
  is handled there (it only re-arms the ping); any other packet goes through
  engine.io's own ``receive``, in a task that exists only while packets wait
  and handles them one after the other, as engine.io's reader does.
* **Writing**: the socket's queue calls ``_flush`` when a packet is put on it
  (``LightQueue.on_put``); the packets are written at once, each as one raw
  websocket frame when deflate is off (else through ``write_message``).
  Packets are taken with ``get_nowait``/``task_done``, so ``close(wait=True)``
  (``queue.join()``) and the fan-out's ordering check see what they always did.
* **Pings**: one ``PingWheel`` per server (one loop timer for every socket)
  sends each socket's PING one ``ping_interval`` after its last PONG (the
  spread value, see engine.py) and checks ``ping_timeout`` after it: a client
  that stops answering is closed with engine.io's PING_TIMEOUT reason, a CLOSE
  packet, then its websocket, at most ping_interval + ping_timeout (+ one
  wheel step) after its last PONG, as before. The PING is one frame built
  once, handed to the kernel with one ``send`` when nothing the session queued
  is unwritten (the fan-out's rule, so order holds), else queued as before; a
  PONG is recognised as the string ``"3"`` without building a Packet (and, by
  the frame reader, as its 7 bytes, see frames.py). The due pings of a wheel
  step go out in one pass and their timeout checks are filed in one bucket.
* Once the websocket is open the request task ends, releasing the handshake,
  and the request's headers go (websocket.py).

Only a websocket-first session (the official client's ``transports:
['websocket']`` and every browser reconnection) runs this way. A session that
starts on polling keeps engine.io's own code (polling, then its upgrade and
its websocket loop), apart from the wheel's pings.

Private names relied on (versions in the package docstring):
``AsyncSocket._websocket_handler`` (overridden; called by engine.io's
websocket driver with the driver's ``WebSocket``, whose ``tornado_handler``
is the tornado handler), ``connected``/``upgraded``/``closing``/``closed``/
``last_ping``/``queue``/``receive``/``close``/``schedule_ping`` (engine.io
calls ``schedule_ping`` after the connect handler and on every PONG; a
session's ``last_ping`` set means a PING is unanswered), ``server.reason``,
and ``AsyncServer._handle_connect`` storing each new ``AsyncSocket`` in
``server.sockets`` before using it (that is where its class is swapped for
``WireSocket``; see ``Sessions``).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Dict, List, Optional

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_socket import AsyncSocket
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from .queues import unsent_packets
from .websocket import send_ready_frame, shed_handshake, text_frame, writable_stream

log = logging.getLogger('crm_realtime.wire')

#: the wheel's step, in seconds: pings and timeout checks are late by at most this much
WHEEL_STEP = 0.25

#: engine.io's PING packet ("2") as one websocket text frame, built once
PING_FRAME = text_frame(eio_packet.Packet(eio_packet.PING).encode())
#: engine.io's PONG packet as the client sends it
PONG = eio_packet.Packet(eio_packet.PONG).encode()

_background = set()     # strong references to the few tasks started here (close, receive)
# per-session state kept outside the sessions' __dict__ (it would grow each one for good)
_inboxes: Dict['WireSocket', List[object]] = {}   # packets waiting for receive(), while a task runs
_flushing = set()


def _spawn(coro) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class PingWheel:
    """Every socket's next PING and ping-timeout check, on one loop timer.

    Buckets of ``WHEEL_STEP`` seconds; one ``call_at`` is armed for the
    earliest bucket. Nothing per socket but its place in a list. The pings
    of a bucket go out together, and their timeout checks all land in one
    bucket. The loop is looked up once (in CPython 3.11 each
    ``get_running_loop()`` is a ``getpid`` system call) and again only when
    the wheel is used from another loop.
    """

    def __init__(self, step: float = WHEEL_STEP):
        self.step = step
        self._pings: Dict[int, List['WireSocket']] = {}
        self._checks: Dict[int, List['WireSocket']] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._armed: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def __len__(self) -> int:
        return sum(map(len, self._pings.values())) + sum(map(len, self._checks.values()))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _key(self, delay: float) -> int:
        return math.ceil((self._running_loop().time() + delay) / self.step)

    def ping_in(self, sock: 'WireSocket', delay: float) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._running_loop()
        key = math.ceil((loop.time() + delay) / self.step)
        sock._ping_key = key
        bucket = self._pings.get(key)
        if bucket is None:
            self._pings[key] = [sock]
            self._arm(key)
        else:
            bucket.append(sock)

    def check_in(self, sock: 'WireSocket', delay: float) -> None:
        key = self._key(delay)
        self._checks.setdefault(key, []).append(sock)
        self._arm(key)

    def _arm(self, key: int) -> None:
        if self._armed is not None and self._armed <= key:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed = key
        self._timer = self._running_loop().call_at(key * self.step, self._tick)

    def _tick(self) -> None:
        self._timer = self._armed = None
        loop = self._loop = asyncio.get_running_loop()
        now_key = math.floor(loop.time() / self.step + 1e-9)
        try:
            for key in sorted(k for k in self._checks if k <= now_key):
                for sock in self._checks.pop(key):
                    try:
                        sock._check_ping_timeout()
                    except Exception:  # noqa: BLE001 - one socket's failure must not stop every other's
                        log.exception('ping wheel: a ping-timeout check failed')
            due = sorted(k for k in self._pings if k <= now_key)
            if due:
                now = time.time()
                pinged = []
                for key in due:
                    for sock in self._pings.pop(key):
                        if sock._ping_key == key:
                            try:
                                if sock._ping(now):
                                    pinged.append(sock)
                            except Exception:  # noqa: BLE001 - as above
                                log.exception('ping wheel: a ping failed')
                if pinged:
                    server = pinged[0].server
                    key = self._key(server.ping_timeout + self.step)
                    bucket = self._checks.get(key)
                    if bucket is None:
                        self._checks[key] = pinged
                    else:
                        bucket.extend(pinged)
        finally:
            pending = [k for d in (self._pings, self._checks) for k in d]
            if pending:
                self._arm(min(pending))


class WireSocket(AsyncSocket):
    """engine.io's session; on a websocket-first connection, without tasks or timers of its own."""

    # class-level defaults: nothing added to a session's __dict__ until it is used
    _ws = None              # the tornado handler, on the event-driven path
    _ping_key = None        # the wheel bucket of the next PING

    # ------------------------------------------------------------------ pings

    def schedule_ping(self):
        # engine.io calls this after the connect handler and on each PONG
        self.last_ping = None
        self.server.pings.ping_in(self, self.server.ping_interval)

    def _ping(self, now: Optional[float] = None) -> bool:
        """Send this session's PING; True when its timeout check is due (the wheel files it)."""
        if self.closing or self.closed:
            return False
        self.last_ping = time.time() if now is None else now
        handler = self._ws
        if handler is None or unsent_packets(self.queue) != 0 or not send_ready_frame(handler, PING_FRAME):
            self.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        return True

    def _check_ping_timeout(self) -> None:
        last = self.last_ping
        if self.closing or self.closed or not last or time.time() - last <= self.server.ping_timeout:
            return
        _spawn(self._ping_timed_out())

    async def _ping_timed_out(self) -> None:
        # engine.io's send() would see the same timeout and drop the CLOSE packet: clear it
        # first, so that the client is told (CLOSE), then its websocket closes (_flush)
        self.last_ping = None
        await self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)
        self._close_transport()

    # ------------------------------------------------------------------ websocket

    async def _websocket_handler(self, ws):
        if self.connected:      # an upgrade from polling: engine.io's own loop
            return await super()._websocket_handler(ws)
        handler = getattr(ws, 'tornado_handler', None)
        if handler is None or not hasattr(self.queue, 'on_put'):
            return await super()._websocket_handler(ws)
        self.connected = True
        self.upgraded = True
        self._ws = handler
        handler.wire_socket = self
        shed_handshake(handler)
        self.queue.on_put = self._flush
        self._flush()           # what was queued before the websocket opened (OPEN, ...)

    def feed(self, message) -> None:
        """One message from the websocket (tornado's on_message)."""
        if self.closed:
            return
        if message == PONG and self not in _inboxes:
            self.schedule_ping()    # the common case, without building a Packet
            return
        if len(message) > self.server.max_http_buffer_size:
            log.info('websocket message of %d bytes over the limit: closing it', len(message))
            self._close_transport()
            return
        try:
            pkt = eio_packet.Packet(encoded_packet=message)
        except Exception:  # noqa: BLE001 - garbage from the client ends its websocket, as in engine.io
            log.info('undecodable websocket message: closing it')
            self._close_transport()
            return
        inbox = _inboxes.get(self)
        if inbox is None:
            if pkt.packet_type == eio_packet.PONG:
                self.schedule_ping()
                return
            _inboxes[self] = [pkt]
            _spawn(self._receive_all())
        else:
            inbox.append(pkt)

    async def _receive_all(self) -> None:
        inbox = _inboxes[self]
        try:
            while inbox:
                pkt = inbox.pop(0)
                try:
                    await self.receive(pkt)
                    if self.closed:         # the client's CLOSE: engine.io ended the session
                        self._close_transport()
                        return
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    self._close_transport()
                    return
                except Exception:  # noqa: BLE001 - engine.io logs and keeps the connection
                    log.exception('error handling a websocket packet')
        finally:
            del _inboxes[self]

    def _flush(self) -> None:
        """Write every queued packet to the websocket now (the queue calls this on each put)."""
        handler = self._ws
        if handler is None or self in _flushing:
            return
        _flushing.add(self)
        queue = self.queue
        try:
            while queue.qsize():
                pkt = queue.get_nowait()
                queue.task_done()
                if pkt is None:                 # engine.io's "writer, stop"
                    self._close_transport()
                    return
                if not self._write(handler, pkt.encode()):
                    self._drain_queue()
                    return
                if pkt.packet_type == eio_packet.CLOSE:
                    self._drain_queue()
                    self._close_transport()
                    return
        finally:
            _flushing.discard(self)

    @staticmethod
    def _write(handler, data) -> bool:
        try:
            stream = writable_stream(handler) if isinstance(data, str) else None
            if stream is not None:
                stream.write(text_frame(data))
            else:
                handler.write_message(data, binary=isinstance(data, bytes))
        except (StreamClosedError, WebSocketClosedError):
            return False
        return True

    def _drain_queue(self) -> None:
        queue = self.queue
        while queue.qsize():
            queue.get_nowait()
            queue.task_done()

    def _close_transport(self) -> None:
        handler = self._ws
        if handler is not None and handler.ws_connection is not None \
                and not handler.ws_connection.is_closing():
            handler.close()     # tornado aborts it if the peer does not answer within 5 s
        elif handler is not None and handler.ws_connection is None:
            self.transport_closed(handler)

    def transport_closed(self, handler) -> None:
        """tornado's on_close: the websocket is gone; end the session as engine.io's loop does."""
        if self._ws is not handler:
            return
        self._ws = None
        self.queue.on_put = None
        self._drain_queue()
        websockets = getattr(self.server, 'websockets', None)
        if websockets is not None and websockets.get(self.sid) is handler:
            del websockets[self.sid]
        _spawn(self._end())

    async def _end(self) -> None:
        try:
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        finally:
            if self.server.sockets.get(self.sid) is self:
                del self.server.sockets[self.sid]


class Sessions(dict):
    """``AsyncServer.sockets``: every session engine.io creates becomes a ``WireSocket``.

    engine.io's ``_handle_connect`` builds an ``AsyncSocket`` and stores it here
    before anything else touches it; the class is swapped on the way in
    (``WireSocket`` adds no instance layout, only methods and class defaults).
    """

    def __setitem__(self, sid, sock):
        if type(sock) is AsyncSocket:
            sock.__class__ = WireSocket
        super().__setitem__(sid, sock)
