"""Reading an open websocket's frames without a coroutine per connection.

tornado reads a websocket in ``WebSocketProtocol13._receive_frame_loop``, a
coroutine awaited at the bottom of the handshake: the request's whole
``_execute`` -> ``get`` -> ``accept_connection`` -> ``_accept_connection`` ->
``_receive_frame_loop`` -> ``_receive_frame`` -> ``_read_bytes`` chain (one
task, about ten coroutine frames, 2-3 KB) stays suspended for the
connection's life. Each frame costs three ``read_bytes`` (header, mask,
payload), each a Future and a coroutine resumption; and because the first read
leaves the rest of the frame in the stream's buffer, the stream drops its READ
interest and adds it back (two ``epoll_ctl`` and the selector's bookkeeping)
on every client message. With 10,000 idle sockets that is 400 pongs a second.

``WireProtocol`` is tornado's protocol with that one method replaced: the
handshake returns at once (the request task ends and frees its frames), and
the stream is read with ``read_bytes(64 KiB, partial=True)``, one Future per
readable event, with a done-callback that parses every complete frame in what
arrived. The frame rules are tornado's (reserved bits, control frames short
and final, continuation frames, the size limit checked from the header, the
mask), and each complete message goes to tornado's own ``_handle_message``
(UTF-8 check, close echo, ping/pong, ``on_message``); when the reading ends,
``handler.on_ws_connection_close`` is called, as tornado's loop does. Only a
connection without per-message deflate is read this way (tornado's loop
otherwise).

Private names relied on (versions in the package docstring):
``WebSocketProtocol13._receive_frame_loop`` (overridden; awaited last by
``_accept_connection``), ``_handle_message(opcode, data)`` (returns a Future
when ``on_message`` is a coroutine), ``_abort``, ``client_terminated``,
``_decompressor`` (None without deflate), ``_wire_bytes_in``, ``params.
max_message_size``, ``stream``; ``WebSocketHandler.on_ws_connection_close``;
``tornado.util._websocket_mask``; ``IOStream.read_chunk_size`` (the size of
the buffer each recv() gets; tornado itself sets it on a stream it wraps in SSL).

**Reading without a Future per message** (``WireIOStream``). Once tornado's
read buffer is empty, a plain (non-SSL) stream's class becomes
``WireIOStream``: its ``_handle_read`` (what tornado's ``_handle_events``
calls on a READ event) does one ``recv_into`` a shared buffer and hands the
bytes to the protocol; its ``reading()`` stays true, so tornado's state
bookkeeping keeps READ interest registered for the connection's life (no
``epoll_ctl`` per message, no Future, no callback round, no ``recv`` that ends
in EAGAIN). Writing, closing and the IOLoop registration stay tornado's: the
protocol learns of a close through ``set_close_callback`` (tornado's
documented way to hear of a close when no read is pending), and a recv error
or EOF closes the stream as tornado's own ``_read_to_buffer`` does. If
``on_message`` returns an awaitable, direct reading pauses (tornado then
buffers at most one chunk, as for any stream nobody reads) and resumes, through
one ``read_bytes``, when it is done. A lone client PONG (``"3"``, one masked
7-byte frame, the bulk of an idle socket's traffic) is recognised from its
bytes and goes straight to ``on_message`` without the frame loop or
``_handle_message`` (which would decode it and call the same ``on_message``).

Also relied on for that: ``IOStream._handle_read`` (overridden; called by
``_handle_events`` on READ, which then re-registers from ``reading()`` and
``writing()``), ``_read_buffer_size``, ``_read_future``, ``_add_io_state``,
``_is_connreset``, ``socket``; ``WebSocketProtocol13._message_bytes_in``.
"""
from __future__ import annotations

import logging

from tornado import gen
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketProtocol13

log = logging.getLogger('crm_realtime.wire')

#: the most read from the stream per readable event
READ_CHUNK = 64 * 1024
#: the stream's recv() buffer on an open websocket (tornado's default, 64 KiB, is a fresh
#: zeroed bytearray per recv: twice per client message, once more for the EAGAIN that ends it)
RECV_CHUNK = 4096
#: recv() calls per readable event at most, on a stream read directly (then back to the loop)
RECV_ROUNDS = READ_CHUNK // RECV_CHUNK

#: the one buffer every directly-read stream receives into (one thread runs the loop;
#: what arrives is copied out before the next recv)
_RECV_BUFFER = bytearray(RECV_CHUNK)

#: a client's engine.io PONG ("3"), as one masked final text frame: 0x81, 0x80 | 1, mask, byte
_PONG_FRAME_LEN = 7
_PONG_BYTE = ord('3')


class WireIOStream(IOStream):
    """tornado's IOStream, read by its protocol straight from the socket (see the module docstring).

    No instance layout added: ``_wire_protocol`` is a class default until set.
    """

    _wire_protocol = None       # the WireProtocol reading this stream; None: tornado reads

    def reading(self) -> bool:
        # true while the protocol reads: tornado's _handle_events then keeps READ registered
        return self._wire_protocol is not None or self._read_future is not None

    def _handle_read(self) -> None:
        protocol = self._wire_protocol
        if protocol is None or self._read_future is not None:
            super()._handle_read()
            return
        sock = self.socket
        for _ in range(RECV_ROUNDS):
            try:
                n = sock.recv_into(_RECV_BUFFER, RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # as tornado's _read_to_buffer: a reset is a close; anything else too, logged once
                if not self._is_connreset(e):
                    log.info('websocket read failed (%s): closing it', e.__class__.__name__)
                self.close(exc_info=e)
                return
            if n == 0:
                self.close()
                return
            if not protocol._wire_received(_RECV_BUFFER[:n]) or n < RECV_CHUNK \
                    or self._wire_protocol is not protocol or self.closed():
                return


class WireProtocol(WebSocketProtocol13):
    """tornado's RFC 6455 protocol, read by callbacks instead of a coroutine loop."""

    # class-level defaults: a connection's __dict__ gains these only when used
    _wire_rest = b''            # bytes of an incomplete frame (a bytearray while it grows)
    _wire_frag = None           # bytearray of a fragmented message, or None
    _wire_frag_opcode = 0
    _wire_ended = False

    async def _receive_frame_loop(self) -> None:
        if self._decompressor is not None:
            await super()._receive_frame_loop()
            return
        if self.stream.read_chunk_size > RECV_CHUNK:
            self.stream.read_chunk_size = RECV_CHUNK
        self._wire_read()

    # ------------------------------------------------------------------ reading

    def _wire_read(self) -> None:
        if self.client_terminated:
            self._wire_end()
            return
        stream = self.stream
        if stream._read_buffer_size == 0 and stream._read_future is None \
                and type(stream) in (IOStream, WireIOStream) and not stream.closed():
            self._wire_direct(stream)
            return
        try:
            future = self.stream.read_bytes(READ_CHUNK, partial=True)
        except StreamClosedError:
            self._abort()
            self._wire_end()
            return
        future.add_done_callback(self._wire_on_data)

    def _wire_direct(self, stream) -> None:
        """Read the stream from its READ events from now on (until a pause or the end)."""
        if type(stream) is IOStream:
            stream.__class__ = WireIOStream
        stream._wire_protocol = self
        stream.set_close_callback(self._wire_stream_closed)
        stream._add_io_state(IOLoop.READ)

    def _wire_stream_closed(self) -> None:
        # tornado's close callback (next loop iteration after the stream closed)
        self._abort()
        self._wire_end()

    def _wire_received(self, data) -> bool:
        """Bytes read directly (WireIOStream); False when reading stops (paused or over)."""
        try:
            if len(data) == _PONG_FRAME_LEN and data[0] == 0x81 and data[1] == 0x81 \
                    and data[6] ^ data[2] == _PONG_BYTE and not self._wire_rest \
                    and self._wire_frag is None and not self.client_terminated:
                self._wire_bytes_in += _PONG_FRAME_LEN
                self._message_bytes_in += 1
                handled = self.handler.on_message('3')
            else:
                handled = self._wire_parse(data)
        except Exception:  # noqa: BLE001 - as tornado's loop: an error ends this connection only
            log.exception('websocket frame handling failed: closing it')
            self._abort()
            self._wire_end()
            return False
        if handled is not None:     # on_message returned an awaitable: pause until it is done
            self.stream._wire_protocol = None
            gen.convert_yielded(handled).add_done_callback(self._wire_after_handled)
            return False
        if self.client_terminated:
            self._wire_end()
            return False
        return True

    def _wire_on_data(self, future) -> None:
        try:
            data = future.result()
        except StreamClosedError:
            self._abort()
            self._wire_end()
            return
        except Exception:  # noqa: BLE001 - cancelled or failed read: the connection is over
            self._abort()
            self._wire_end()
            return
        try:
            handled = self._wire_parse(data)
        except Exception:  # noqa: BLE001 - as tornado's loop: an error ends this connection only
            log.exception('websocket frame handling failed: closing it')
            self._abort()
            self._wire_end()
            return
        if handled is not None:     # on_message returned an awaitable: read on once it is done
            gen.convert_yielded(handled).add_done_callback(self._wire_after_handled)
            return
        self._wire_read()

    def _wire_after_handled(self, _future) -> None:
        try:
            handled = self._wire_parse(b'')
        except Exception:  # noqa: BLE001
            log.exception('websocket frame handling failed: closing it')
            self._abort()
            self._wire_end()
            return
        if handled is not None:
            gen.convert_yielded(handled).add_done_callback(self._wire_after_handled)
            return
        self._wire_read()

    def _wire_end(self) -> None:
        if self._wire_ended:
            return
        self._wire_ended = True
        stream = self.stream
        if getattr(stream, '_wire_protocol', None) is self:
            stream._wire_protocol = None
        if self._wire_rest:
            self._wire_rest = b''
        self._wire_frag = None
        self.handler.on_ws_connection_close(self.close_code, self.close_reason)

    # ------------------------------------------------------------------ frames

    def _wire_parse(self, data: bytes):
        """Handle every complete frame of what is buffered; returns an awaitable to wait for, or None."""
        rest = self._wire_rest
        if rest:
            rest += data            # a bytearray once a frame spans reads: amortized appends
            buf = rest
        else:
            buf = data
        n = len(buf)
        pos = 0
        limit = self.params.max_message_size
        handled = None
        while not self.client_terminated and handled is None:
            avail = n - pos
            if avail < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:           # reserved bits, no extension negotiated
                self._abort()
                return None
            opcode = b0 & 0x0F
            final = b0 & 0x80
            length = b1 & 0x7F
            head = 2
            if opcode & 0x8 and length >= 126:
                self._abort()       # control frames carry at most 125 bytes
                return None
            if length == 126:
                if avail < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], 'big')
                head = 4
            elif length == 127:
                if avail < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], 'big')
                head = 10
            frag = self._wire_frag
            if length + (len(frag) if frag is not None else 0) > limit:
                self.close(1009, 'message too big')
                self._abort()
                return None
            masked = b1 & 0x80
            end = pos + head + (4 if masked else 0) + length
            if end > n:
                break
            if masked:
                mask = bytes(buf[pos + head:pos + head + 4])
                payload = _websocket_mask(mask, bytes(buf[pos + head + 4:end]))
            else:
                payload = bytes(buf[pos + head:end])
            self._wire_bytes_in += end - pos
            pos = end
            if opcode & 0x8:
                if not final:
                    self._abort()   # control frames are never fragmented
                    return None
            elif opcode == 0:       # continuation
                if frag is None:
                    self._abort()
                    return None
                frag.extend(payload)
                if final:
                    opcode = self._wire_frag_opcode
                    payload = bytes(frag)
                    self._wire_frag = None
            else:                   # a new data message
                if frag is not None:
                    self._abort()
                    return None
                if not final:
                    self._wire_frag_opcode = opcode
                    self._wire_frag = bytearray(payload)
            if final:
                handled = self._handle_message(opcode, payload)
        # keep what is left of an incomplete frame
        # (assigned only when it changes: a new attribute would grow the protocol's __dict__ for good)
        if pos >= n:
            if rest:
                self._wire_rest = b''
        elif buf is rest:
            if pos:
                del rest[:pos]
        else:
            self._wire_rest = bytearray(buf[pos:])
        if self.client_terminated and handled is None:
            return None
        return handled


def wire_protocol(protocol):
    """Make tornado's server-side protocol object a ``WireProtocol`` (no instance layout added)."""
    if type(protocol) is WebSocketProtocol13:
        protocol.__class__ = WireProtocol
    return protocol
