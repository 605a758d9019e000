"""The HTTP/WebSocket handler under Socket.IO: engine.io's tornado handler, adjusted.

Private names relied on (versions in the package docstring): the tornado
driver's handler calls ``on_message`` / ``get_next_message`` / ``on_close`` on
its ``receive_queue`` (kept, with a lighter queue), and its ``get`` hands a
non-upgrade GET to engine.io; socketio's ``AsyncServer.environ`` (the
handshake environ per engine.io sid: its ``REMOTE_ADDR``); ``WebSocketHandler.
ws_connection`` and its ``_compressor`` (None when deflate is off) and
``stream`` (the IOStream raw frames are written to, see fanout.py).

What changes, all about running in production:

* **Refused means closed.** engine.io refuses a websocket (unknown sid, a
  session already upgraded, a bad origin) after tornado has answered 101, and
  leaves it open. Here the engine.io request runs in a task of ours; when it
  ends, whether engine.io served the websocket or refused it, the websocket
  is closed (1008 when refused).
* **A session is its client's.** engine.io takes the ``sid`` of a request as
  the session's only credential. Here a request naming a session (a poll, a
  post, an upgrade) is refused with 400 unless it comes from the address that
  opened the session (``REMOTE_ADDR`` of the handshake; behind a proxy, from
  ``X-Forwarded-For``), and a poll that overlaps the session's pending poll is
  refused (socket.io-client never sends two at once; a second one is someone
  else holding the sid).
* **Origins checked before the upgrade.** With ``SIDECAR_CORS_ORIGINS`` unset
  (same origin only) a cross-origin websocket gets 403 from tornado instead of
  a 101 followed by engine.io's refusal.
* **Bodies bounded before they are read.** A polling POST whose
  ``Content-Length`` passes ``SIDECAR_MAX_HTTP_BUFFER_BYTES`` gets 413 without
  its body being read; a chunked one is cut off (413, connection closed) as
  soon as it passes the limit. tornado's own default would buffer 100 MB.
* Per-message deflate is off unless ``SIDECAR_WEBSOCKET_COMPRESSION`` is on
  (a deflate context costs CPU on every frame and a few hundred KB of zlib
  state per connection); Nagle is off (events are small, latency is the point).
* Open websockets are tracked so that a shutdown can close them:
  socket.io-client only notices the websocket closing, not engine.io's CLOSE.
* Incoming messages wait in an ``Inbox`` instead of an ``asyncio.Queue``, or,
  once the session runs event-driven (session.py), go straight to it
  (``wire_socket.feed``); its end is told to it (``transport_closed``).
"""
from __future__ import annotations

import asyncio
import logging
import struct
from types import MappingProxyType
from typing import Optional

import socketio
import tornado.web
import tornado.websocket

from tornado.httputil import HTTPHeaders
from tornado.iostream import SSLIOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError

from .frames import wire_protocol
from .queues import Inbox, lighten_stream

log = logging.getLogger('crm_realtime.wire')

#: close code for a websocket engine.io refused (RFC 6455: policy violation)
REFUSED = 1008

#: what an open websocket's request keeps instead of its headers (read only before open)
_NO_HEADERS = HTTPHeaders()
#: ... and instead of its argument dicts (read-only: nothing may add to a shared one)
_NO_ARGUMENTS = MappingProxyType({})

#: handler attributes set by the handshake and not read once the websocket is open; the
#: handler class has a default for each (an attribute absent from an instance costs nothing)
_HANDSHAKE_ATTRIBUTES = ('ui', '_transforms', '_prepared_future', '_headers', 'path_args',
                         'path_kwargs', 'open_args', 'open_kwargs', '_chunks', '_size', '_refused',
                         'allowed_origins', '_write_buffer', 'receive_queue')


def websocket_handler(sio, *, compression: bool, max_body_bytes: int, cors_origins):
    """The tornado handler class for ``/socket.io/``."""
    eio = sio.eio
    base = socketio.get_tornado_handler(sio)

    @tornado.web.stream_request_body
    class Handler(base):
        live = set()        # open websockets
        polls = set()       # sids with a poll pending
        wire_socket = None      # the engine.io session, once it runs event-driven (session.py)
        # a request body's chunks while it streams in (class-level defaults: no dict slot until used)
        _chunks = None
        _size = 0
        _refused = False
        # what stands in for the handshake's attributes an open websocket drops (shed_handshake)
        ui = None
        _transforms = None
        _prepared_future = None
        _headers = _NO_HEADERS
        path_args = open_args = ()
        path_kwargs = open_kwargs = _NO_ARGUMENTS
        allowed_origins = None      # engine.io's driver's, read by its check_origin (ours is below)
        receive_queue = None        # engine.io's loop reads it; an event-driven session does not
        _write_buffer = ()          # the response body buffer; write() is disabled once open

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.receive_queue = Inbox()

        # -------------------------------------------------------------- sessions

        def _foreign_session(self) -> bool:
            """True (and a 400 sent) when the request names a session that is not its client's."""
            sid = self.get_query_argument('sid', None)
            if not sid:
                return False
            opened = sio.environ.get(sid)
            if opened is not None and opened.get('REMOTE_ADDR') != self.request.remote_ip:
                return self._refuse_session('a request for a session opened from another address')
            return False

        def _refuse_session(self, what: str) -> bool:
            log.info('refused %s (from %s)', what, self.request.remote_ip)
            self.set_status(400)
            self.finish('Bad request')
            return True

        async def get(self, *args, **kwargs):
            if self._foreign_session():
                return
            sid = self.get_query_argument('sid', None)
            upgrade = self.request.headers.get('Upgrade', '').lower() == 'websocket'
            if sid is None or upgrade:
                return await super().get(*args, **kwargs)
            polls = type(self).polls
            if sid in polls:
                self._refuse_session('a poll overlapping the pending poll of its session')
                return
            polls.add(sid)
            try:
                await super().get(*args, **kwargs)
            finally:
                polls.discard(sid)

        # -------------------------------------------------------------- HTTP bodies

        def prepare(self):
            length = self.request.headers.get('Content-Length')
            if length is not None:
                try:
                    too_long = int(length) > max_body_bytes
                except ValueError:
                    too_long = True
                if too_long:
                    self._refuse_body()

        def data_received(self, chunk):
            if self._refused:
                return
            self._size += len(chunk)
            if self._size > max_body_bytes:
                self._chunks = None
                self._refuse_body()
                return
            if self._chunks is None:
                self._chunks = []
            self._chunks.append(chunk)

        def _refuse_body(self):
            log.info('refused a %s body over %d bytes from %s', self.request.method,
                     max_body_bytes, self.request.remote_ip)
            self._refused = True
            self.set_status(413)
            self.set_header('Connection', 'close')
            self.finish(f'body larger than {max_body_bytes} bytes')
            self.request.connection.stream.close()  # the rest of the body is not read

        async def post(self, *args, **kwargs):
            if self._foreign_session():
                return
            self.request.body = b''.join(self._chunks or ())
            self._chunks = None
            await eio.handle_request(self)

        # -------------------------------------------------------------- websocket

        def check_origin(self, origin):
            if cors_origins == '*':
                return True
            if cors_origins:
                allowed = origin in cors_origins
            else:
                allowed = tornado.websocket.WebSocketHandler.check_origin(self, origin)
            if not allowed:
                log.warning('refused a websocket from origin %s (from %s): not in SIDECAR_CORS_ORIGINS%s',
                            origin[:200], self.request.remote_ip,
                            '' if cors_origins else ', which is unset (same origin only)')
            return allowed

        def on_message(self, message):
            # not a coroutine: tornado then reads the next frame without awaiting anything
            sock = self.wire_socket
            if sock is not None:
                sock.feed(message)
            else:
                self.receive_queue.put_nowait(message)

        async def get_next_message(self):
            return await self.receive_queue.get()

        def open(self, *args, **kwargs):
            type(self).live.add(self)
            self.set_nodelay(True)
            task = asyncio.ensure_future(eio.handle_request(self))
            task.add_done_callback(self._engineio_done)

        def _engineio_done(self, task: asyncio.Future) -> None:
            if self.wire_socket is not None and task.cancelled() is False and task.exception() is None:
                return      # the session runs event-driven: the request's work is done, not the socket
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.info('websocket from %s refused by engine.io (%s)', self.request.remote_ip,
                         exc.__class__.__name__)
            if self.ws_connection is not None and not self.ws_connection.is_closing():
                self.close(REFUSED, 'refused')

        def on_close(self):
            type(self).live.discard(self)
            sock = self.wire_socket
            if sock is not None:
                sock.transport_closed(self)
            else:
                super().on_close()

        def get_compression_options(self):
            return {} if compression else None

        def get_websocket_protocol(self):
            # tornado's protocol, read by callbacks once open (frames.py)
            protocol = super().get_websocket_protocol()
            return wire_protocol(protocol) if protocol is not None else None

    return Handler


def shed_handshake(handler) -> None:
    """Drop what an open websocket no longer needs; called once engine.io has its environ.

    The request's headers and query arguments were read by the handshake
    (tornado's, then engine.io's ``translate_request``; what the connect
    handler reads is in the environ). ``remote_ip`` stays. The HTTP/1
    connection objects go, and the handler's handshake-only attributes (its
    response headers, UI namespace, transforms, path and open arguments) fall
    back to class-level defaults, with the handler's ``__dict__`` rebuilt.

    The IOStream's two deques (its write buffer's chunks and the futures of
    pending writes, 760 bytes each, empty nearly all the time) become
    ``LazyDeque``s, deques only while they hold something. (Not lists: as
    lists, a client that falls behind makes every write it then drains cost a
    copy of the whole backlog, which stalled the server for 30 s at 10,000
    websockets.)
    """
    request = handler.request
    headers, request.headers = request.headers, _NO_HEADERS
    if headers is not _NO_HEADERS:
        headers.clear()     # in case anything still refers to the same object
    request.arguments = request.query_arguments = _NO_ARGUMENTS
    request.body_arguments = request.files = _NO_ARGUMENTS
    # the HTTP/1 connection the handshake came on: detached from the stream, its reader
    # done; kept only by the request (HTTP1Connection, HTTP1ServerConnection, their futures)
    request.connection = request.server_connection = None
    if type(handler).ui is None:            # the wire's handler class, with its defaults
        attrs = handler.__dict__
        for name in _HANDSHAKE_ATTRIBUTES:
            attrs.pop(name, None)
        handler.__dict__ = dict(attrs)      # a dict does not shrink when keys go; a copy does
    stream = getattr(handler.ws_connection, 'stream', None)
    if stream is not None:
        lighten_stream(stream)


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


def _send_some(sock, frame: bytes) -> int:
    """One non-blocking send; 0 when the kernel takes nothing or the socket failed.

    Failure is left to tornado: the caller then hands the frame to
    ``IOStream.write``, which meets the same error and closes the stream the
    usual way (on_close, disconnect handlers).
    """
    try:
        return sock.send(frame)
    except OSError:     # BlockingIOError (buffer full) included
        return 0


def send_frame(stream, frame: bytes) -> None:
    """Write one ready-made frame to a websocket's stream, in order with what tornado holds.

    When tornado holds no unsent bytes for the stream, the frame goes to the
    kernel with one ``send`` (no Future, no bookkeeping); whatever the kernel
    does not take, or the whole frame when tornado still holds bytes, goes
    through ``IOStream.write``, behind them. Raises ``StreamClosedError``.
    """
    pending = getattr(stream, '_write_buffer', None)     # tornado's unsent bytes
    if pending is None or pending or stream._connecting or isinstance(stream, SSLIOStream):
        stream.write(frame)
        return
    sent = _send_some(stream.socket, frame)
    if sent < len(frame):       # kernel buffer full: tornado keeps the rest
        stream.write(frame[sent:] if sent else frame)


def send_ready_frame(handler, frame: bytes) -> bool:
    """``send_frame`` to the handler's websocket when a raw frame can go now; False when it cannot.

    What ``writable_stream`` and ``send_frame`` do, in one call (the PING of
    every idle socket goes this way): False, nothing written, when the
    websocket is closing, compressed or its stream closed or on SSL; the
    frame goes to the kernel with one ``send`` when tornado holds no unsent
    bytes, else (or for what the kernel does not take) through ``IOStream.write``.
    """
    conn = handler.ws_connection
    if conn is None or conn.client_terminated or conn.server_terminated \
            or getattr(conn, '_compressor', None) is not None:
        return False
    stream = conn.stream
    if stream.closed():
        return False
    try:
        pending = stream._write_buffer
        if pending is None or len(pending) or stream._connecting or isinstance(stream, SSLIOStream):
            stream.write(frame)
            return True
        sent = _send_some(stream.socket, frame)
        if sent < len(frame):
            stream.write(frame[sent:] if sent else frame)
    except (StreamClosedError, WebSocketClosedError):
        return False
    return True


def writable_stream(handler) -> Optional[object]:
    """The handler's IOStream when a raw frame can be written to it, else None."""
    conn = handler.ws_connection
    if conn is None or conn.is_closing() or getattr(conn, '_compressor', None) is not None:
        return None
    stream = conn.stream
    return None if stream.closed() else stream
