"""The callback frame reader (sidecar/wire/frames.py) against hand-made RFC 6455 frames.

A raw TCP client does the websocket handshake itself, so that frames can be
split, coalesced, fragmented and malformed as a real network or a hostile
client would.
"""
import asyncio
import base64
import json
import os
import struct

import pytest

from tests.conftest import make_token

pytestmark = pytest.mark.usefixtures('io_loop')


def frame(payload: bytes, opcode=0x1, final=True, rsv=0, mask=True) -> bytes:
    head = bytes([(0x80 if final else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n <= 0xFFFF:
        head += bytes([bit | 126]) + struct.pack('!H', n)
    else:
        head += bytes([bit | 127]) + struct.pack('!Q', n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWS:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url):
        host, port = url.split('//')[1].split(':')
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n'
                      f'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n'
                      'Sec-WebSocket-Version: 13\r\n\r\n').encode())
        head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 5)
        assert head.startswith(b'HTTP/1.1 101'), head
        return cls(reader, writer)

    async def recv(self, timeout=5):
        """(opcode, payload) of the next frame from the server, or None when the stream ends."""
        try:
            b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        except asyncio.IncompleteReadError:
            return None
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack('!H', await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack('!Q', await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def recv_text(self, timeout=5):
        while True:
            got = await self.recv(timeout)
            assert got is not None, 'the server closed the websocket'
            opcode, data = got
            if opcode == 0x1 and data != b'2':      # skip engine.io pings
                return data.decode()

    async def send_raw(self, data: bytes, piecewise=False):
        if piecewise:
            for i in range(len(data)):
                self.writer.write(data[i:i + 1])
                await self.writer.drain()
                await asyncio.sleep(0)
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def closed(self, timeout=5):
        """True once the server ends the websocket (a close frame or the stream's end)."""
        while True:
            got = await self.recv(timeout)
            if got is None or got[0] == 0x8:
                return True

    def close(self):
        self.writer.close()


def connect_packet(token):
    return ('40' + json.dumps({'token': token})).encode()


@pytest.mark.gen_test(timeout=30)
async def test_a_message_sent_byte_by_byte_is_read(make_sidecar, database):
    sc = await make_sidecar(database)
    ws = await RawWS.open(sc.url)
    try:
        assert (await ws.recv_text()).startswith('0{')
        await ws.send_raw(frame(connect_packet(make_token())), piecewise=True)
        assert (await ws.recv_text()).startswith('40{')
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_fragments_with_a_ping_between_and_frames_in_one_write(make_sidecar, database):
    sc = await make_sidecar(database)
    ws = await RawWS.open(sc.url)
    try:
        assert (await ws.recv_text()).startswith('0{')
        body = connect_packet(make_token())
        parts = [body[:3], body[3:20], body[20:]]
        data = (frame(parts[0], final=False) + frame(b'hello', opcode=0x9)
                + frame(parts[1], opcode=0x0, final=False) + frame(parts[2], opcode=0x0))
        await ws.send_raw(data)
        pong = await ws.recv()
        assert pong == (0xA, b'hello'), pong
        assert (await ws.recv_text()).startswith('40{')
        # a 70,000-byte event (64-bit extended length) in two writes, the second also carrying a
        # PONG and a ping: the ping's answer shows that everything before it was read through
        big = frame(('42' + json.dumps(['unknown:event', 'x' * 69_990])).encode())
        await ws.send_raw(big[:1000])
        await asyncio.sleep(0.05)
        await ws.send_raw(big[1000:] + frame(b'3') + frame(b'after', opcode=0x9))
        got = await ws.recv()
        while got is not None and got[0] == 0x1:
            got = await ws.recv()
        assert got == (0xA, b'after'), got
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize('bad', [
    frame(b'40', rsv=0x40),                             # reserved bit without deflate
    frame(b'x' * 126, opcode=0x9),                      # control frame over 125 bytes
    frame(b'x', opcode=0x9, final=False),               # fragmented control frame
    frame(b'more', opcode=0x0),                         # a continuation of nothing
    frame(b'4', final=False) + frame(b'4'),             # a new message inside a fragmented one
    frame(b'\xff\xfe', opcode=0x1),                     # text that is not UTF-8
    frame(b'x', opcode=0x3),                            # a reserved opcode
], ids=['rsv', 'long-control', 'fragmented-control', 'orphan-continuation', 'interleaved',
        'bad-utf8', 'reserved-opcode'])
async def test_a_malformed_frame_ends_the_websocket_and_its_session(make_sidecar, database, bad):
    sc = await make_sidecar(database)
    eio = sc.realtime.sio.eio
    ws = await RawWS.open(sc.url)
    try:
        assert (await ws.recv_text()).startswith('0{')
        await ws.send_raw(frame(connect_packet(make_token())))
        assert (await ws.recv_text()).startswith('40{')
        await ws.send_raw(bad)
        assert await ws.closed()
        for _ in range(100):
            if not eio.websockets and not eio.sockets:
                break
            await asyncio.sleep(0.05)
        assert not eio.websockets and not eio.sockets, 'the session outlived its websocket'
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_message_over_the_size_limit_is_refused_from_its_header(make_sidecar, database):
    sc = await make_sidecar(database)
    ws = await RawWS.open(sc.url)
    try:
        assert (await ws.recv_text()).startswith('0{')
        limit = sc.realtime.websocket_handler.max_message_size if hasattr(
            sc.realtime.websocket_handler, 'max_message_size') else 10 * 1024 * 1024
        # only the header of a frame claiming more than tornado's limit: refused without its body
        await ws.send_raw(bytes([0x81, 0x80 | 127]) + struct.pack('!Q', 64 * 1024 * 1024) + b'abcd')
        got = await ws.recv()
        while got is not None and got[0] != 0x8:
            got = await ws.recv()
        assert got is not None and struct.unpack('!H', got[1][:2])[0] == 1009, (got, limit)
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_client_close_is_echoed_and_the_session_ends(make_sidecar, database):
    sc = await make_sidecar(database)
    eio = sc.realtime.sio.eio
    ws = await RawWS.open(sc.url)
    try:
        assert (await ws.recv_text()).startswith('0{')
        await ws.send_raw(frame(connect_packet(make_token())))
        assert (await ws.recv_text()).startswith('40{')
        await ws.send_raw(frame(struct.pack('!H', 1000) + b'bye', opcode=0x8))
        got = await ws.recv()
        while got is not None and got[0] != 0x8:
            got = await ws.recv()
        assert got is not None and struct.unpack('!H', got[1][:2])[0] == 1000, got
        for _ in range(100):
            if not eio.websockets and not eio.sockets:
                break
            await asyncio.sleep(0.05)
        assert not eio.websockets and not eio.sockets
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=30)
async def test_an_open_websocket_is_read_directly_and_a_lone_pong_rearms_its_ping(make_sidecar, database):
    import time
    from sidecar.wire.frames import WireIOStream
    sc = await make_sidecar(database)
    ws = await RawWS.open(sc.url)
    try:
        assert (await ws.recv_text()).startswith('0{')
        await ws.send_raw(frame(connect_packet(make_token())))
        assert (await ws.recv_text()).startswith('40{')
        eio = sc.realtime.sio.eio
        (sock,) = [s for s in eio.sockets.values() if s._ws is not None]
        stream = sock._ws.ws_connection.stream
        assert type(stream) is WireIOStream and stream._wire_protocol is sock._ws.ws_connection
        # as if a PING were unanswered: the lone PONG frame (7 bytes, its own write) re-arms it
        sock.last_ping = time.time()
        sock._ping_key = None       # (schedule_ping files it again)
        await ws.send_raw(frame(b'3'))
        for _ in range(100):
            if sock.last_ping is None:
                break
            await asyncio.sleep(0.01)
        assert sock.last_ping is None and sock._ping_key is not None
        # and frames after it still go through the frame parser (a websocket ping is answered)
        await ws.send_raw(frame(b'3') + frame(b'after', opcode=0x9))
        got = await ws.recv()
        while got is not None and got[0] == 0x1:
            got = await ws.recv()
        assert got == (0xA, b'after'), got
    finally:
        ws.close()
