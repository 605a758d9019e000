"""The HTTP/WebSocket transport under Socket.IO: engine.io's tornado handler, adjusted.

Three changes, all about running in production:

* Per-message deflate is off unless ``SIDECAR_WEBSOCKET_COMPRESSION`` is on.
  The driver enables it by default; our events are small JSON, and a deflate
  context costs CPU on every frame and a few hundred KB of zlib state per
  connection, which is most of a socket's memory.
* Open websockets are tracked so that a shutdown can close them. engine.io's
  CLOSE packet is not acted on by socket.io-client, which only notices the
  websocket closing; without this, clients of a stopped sidecar would wait for
  a ping timeout (up to 45 s) before reconnecting and recovering elsewhere.
* Each websocket is registered under its engine.io session id, so the fan-out
  (fanout.py) can write one pre-built frame straight to its stream.
* Pings are spread out (``EngineIOServer``). engine.io pings a socket one
  interval after its last pong, so sockets that connected together (every
  client after a restart) stay in step for ever and are pinged in one burst:
  one writer-task wake-up, a ``write_message`` and a pong per socket, all in
  the same tick, in front of whatever event is being delivered. Measured with
  200 clients: the burst held deliveries up to ~28 ms, against ~14 ms without it.
* Incoming messages wait in a small inbox instead of an ``asyncio.Queue``
  (four deques, about 3 KB per connection, for what is one reader and a
  handful of client messages: pongs, acks). The engine.io driver touches the
  queue only through ``on_message``, ``get_next_message`` and ``on_close``,
  which the subclass keeps.
* Each engine.io socket's outgoing queue (``AsyncServer.create_queue``) is an
  ``asyncio.Queue`` whose four deques (760 bytes each, even empty) are
  replaced by lists: a socket's queue holds a few packets at most, and the
  fan-out writes most events around it (``LightQueue``).
"""
from __future__ import annotations

import asyncio
import collections
import random
import struct
from typing import Dict, List, Optional

import engineio
import socketio

#: each ping comes at a random point of the last PING_SPREAD of the interval
PING_SPREAD = 0.1


class _Fifo(list):
    """A list with the one deque method asyncio's Queue and Event call on their waiters."""
    __slots__ = ()

    def popleft(self):
        return self.pop(0)


class LightQueue(asyncio.Queue):
    """``asyncio.Queue`` with list storage: same behaviour, about 2.8 KB less per instance.

    ``_init``/``_get``/``_put`` are the hooks asyncio documents for subclasses
    (PriorityQueue and LifoQueue use them). The waiter deques are asyncio's
    own attributes; they are swapped only when present with the expected
    type, so a Python that changes them gets a plain queue.
    """

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize)
        finished = getattr(self, '_finished', None)
        if isinstance(getattr(self, '_getters', None), collections.deque) \
                and isinstance(getattr(self, '_putters', None), collections.deque) \
                and isinstance(getattr(finished, '_waiters', None), collections.deque):
            self._getters = _Fifo()
            self._putters = _Fifo()
            finished._waiters = _Fifo()

    def _init(self, maxsize):
        self._queue = _Fifo()

    def _get(self):
        return self._queue.pop(0)

    def _put(self, item):
        self._queue.append(item)


class EngineIOServer(engineio.AsyncServer):
    """engine.io with light socket queues, and pings spread out.

    ``create_queue`` (engine.io's hook for a socket's outgoing queue) makes a
    ``LightQueue``. ``ping_interval`` is read as a fresh random value in
    [0.9, 1] x interval.

    engine.io reads ``ping_interval`` when it sleeps before a socket's next
    ping, in the handshake (the client's ``pingInterval``) and for its poll
    timeout. Every value read is at most the configured interval, so a client
    always hears a ping within what it was told, and sockets drift apart
    instead of being pinged in the same tick.
    """

    def create_queue(self, *args, **kwargs):
        return LightQueue(*args, **kwargs)

    @property
    def ping_interval(self) -> float:
        return self._ping_every * (1.0 - PING_SPREAD * random.random())

    @ping_interval.setter
    def ping_interval(self, value: float) -> None:
        self._ping_every = value


class Inbox:
    """An unbounded single-reader FIFO: what engine.io's driver needs of its receive queue."""
    __slots__ = ('_items', '_waiter')

    def __init__(self):
        self._items: List[object] = []
        self._waiter: Optional[asyncio.Future] = None

    def put_nowait(self, item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item) -> None:
        self.put_nowait(item)

    async def get(self):
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def qsize(self) -> int:
        return len(self._items)


def websocket_handler(sio, *, compression: bool):
    base = socketio.get_tornado_handler(sio)

    class Handler(base):
        live = set()
        by_eio_sid: Dict[str, 'Handler'] = {}

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.receive_queue = Inbox()

        async def on_message(self, message):
            self.receive_queue.put_nowait(message)

        async def get_next_message(self):
            return await self.receive_queue.get()

        def open(self, *args, **kwargs):
            type(self).live.add(self)
            # tornado leaves Nagle's algorithm on for websockets: a frame written
            # while an earlier one is unacknowledged waits for the peer's delayed
            # ACK (tens of ms). Events are small and latency is the point.
            self.set_nodelay(True)
            # an upgrade from polling names its session; a websocket-first
            # connection is registered by the connect handler (register()).
            sid = self.get_query_argument('sid', None)
            if sid:
                self.eio_sid = sid
                type(self).by_eio_sid[sid] = self
            return super().open(*args, **kwargs)

        def on_close(self):
            type(self).live.discard(self)
            sid = getattr(self, 'eio_sid', None)
            if sid is not None and type(self).by_eio_sid.get(sid) is self:
                del type(self).by_eio_sid[sid]
            super().on_close()

        def get_compression_options(self):
            return {} if compression else None

        @classmethod
        def register(cls, eio_sid: str, handler) -> None:
            if isinstance(handler, cls) and handler.ws_connection is not None:
                handler.eio_sid = eio_sid
                cls.by_eio_sid[eio_sid] = handler

    return Handler


def close_websockets(handler_cls, code: int = 1001, reason: str = 'server shutting down') -> None:
    for handler in list(handler_cls.live):
        handler.close(code, reason)


def text_frame(payload: str) -> bytes:
    """An unmasked, uncompressed, final websocket text frame (RFC 6455 section 5.2)."""
    data = payload.encode('utf-8')
    n = len(data)
    if n < 126:
        return struct.pack('!BB', 0x81, n) + data
    if n <= 0xFFFF:
        return struct.pack('!BBH', 0x81, 126, n) + data
    return struct.pack('!BBQ', 0x81, 127, n) + data


def writable_stream(handler) -> Optional[object]:
    """The handler's IOStream when a raw frame can be written to it, else None."""
    conn = handler.ws_connection
    if conn is None or conn.is_closing() or getattr(conn, '_compressor', None) is not None:
        return None
    stream = conn.stream
    return None if stream.closed() else stream
