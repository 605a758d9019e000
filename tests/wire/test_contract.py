"""Contract tests: one per library internal the wire relies on (sidecar/wire/__init__.py).

Each fails with a message naming the internal when an installed release of
engine.io, socketio, tornado or asyncio no longer means what the wire was
written against. Behaviour is checked where it can be on real objects; where a
meaning lives in the library's own code path (who calls what), its source is
read, which is exactly the dependency the wire has.
"""
import asyncio
import collections
import inspect
import socket

import engineio
import pytest
import socketio
import tornado.iostream
import tornado.websocket
from engineio import async_socket
from engineio.async_drivers import tornado as eio_tornado

from sidecar import wire
from sidecar.wire.queues import LightQueue, unsent_packets

pytestmark = pytest.mark.usefixtures('io_loop')


def _src(obj) -> str:
    return inspect.getsource(obj)


def need(condition, name, meaning):
    assert condition, f'library internal changed: {name} no longer {meaning}; see sidecar/wire/__init__.py'


# ------------------------------------------------------------------ asyncio

@pytest.mark.gen_test
async def test_asyncio_queue_waiters_are_deques_and_unfinished_tasks_counts():
    q = asyncio.Queue()
    need(isinstance(q._getters, collections.deque), 'asyncio.Queue._getters', 'is a deque')
    need(isinstance(q._putters, collections.deque), 'asyncio.Queue._putters', 'is a deque')
    need(isinstance(q._finished._waiters, collections.deque), 'asyncio.Queue._finished._waiters',
         'is a deque')
    q.put_nowait(1)
    q.put_nowait(2)
    need(q._unfinished_tasks == 2, 'asyncio.Queue._unfinished_tasks', 'counts items put')
    q.get_nowait()
    q.task_done()
    need(q._unfinished_tasks == 1, 'asyncio.Queue._unfinished_tasks', 'drops on task_done()')


@pytest.mark.gen_test
async def test_asyncio_queue_storage_goes_through_init_get_put():
    q = LightQueue()
    for i in range(3):
        q.put_nowait(i)
    need(type(q._queue) is not collections.deque, 'asyncio.Queue._init', 'creates the storage')
    need([q.get_nowait() for _ in range(3)] == [0, 1, 2], 'asyncio.Queue._get/_put', 'are FIFO hooks')
    need(unsent_packets(q) == 3, 'asyncio.Queue._unfinished_tasks', 'is an int')


# ------------------------------------------------------------------ engine.io

def _server():
    return wire.EngineIOServer(async_mode='tornado')


@pytest.mark.gen_test
async def test_engineio_driver_table_has_the_wrapped_entries():
    base = engineio.AsyncServer(async_mode='tornado')
    need({'websocket', 'translate_request', 'make_response'} <= set(base._async),
         'engineio AsyncServer._async', 'holds websocket/translate_request/make_response')
    server = _server()
    need(server._async is not base._async and base._async['websocket'] is eio_tornado.WebSocket,
         'engineio AsyncServer._async', 'is a per-module table the wire may copy')
    need(issubclass(server._async['websocket'], eio_tornado.WebSocket),
         'engineio async_drivers.tornado.WebSocket', 'is the class the driver table names')


def test_engineio_builds_the_websocket_wrapper_with_the_sessions_handler():
    src = _src(async_socket.AsyncSocket._upgrade_websocket)
    need("self.server._async['websocket'](" in src and 'self._websocket_handler' in src,
         'engineio AsyncSocket._upgrade_websocket',
         "builds _async['websocket'](self._websocket_handler, server)")
    params = list(inspect.signature(eio_tornado.WebSocket.__init__).parameters)
    need(params[:3] == ['self', 'handler', 'server'], 'engineio tornado WebSocket.__init__',
         'takes (handler, server)')
    need("environ['tornado.handler']" in _src(eio_tornado.WebSocket.__call__),
         "engineio tornado WebSocket.__call__ / environ['tornado.handler']",
         'reads the tornado handler from the environ')


def test_engineio_tornado_websocket_send_is_a_write_message():
    src = _src(eio_tornado.WebSocket.send)
    need('self.tornado_handler.write_message(' in src and 'EngineIOError' in src,
         'engineio tornado WebSocket.send / tornado_handler',
         'writes with tornado_handler.write_message and raises EngineIOError when closed')


def test_engineio_upgrade_flags_guard_the_websocket_handler():
    src = _src(async_socket.AsyncSocket._websocket_handler)
    for flag in ('self.upgrading = True', 'self.upgraded = True', 'self.upgrading = False'):
        need(flag in src, f'engineio AsyncSocket.{flag.split()[0][5:]}', 'is set around the upgrade')
    need('raise OSError' in _src(async_socket.AsyncSocket._upgrade_websocket)
         and 'if self.upgraded' in _src(async_socket.AsyncSocket._upgrade_websocket),
         'engineio AsyncSocket.upgraded', 'refuses a second upgrade')


@pytest.mark.gen_test
async def test_engineio_sockets_and_socket_attributes():
    server = _server()
    need(isinstance(server.sockets, dict), 'engineio AsyncServer.sockets', 'is a dict sid -> socket')
    s = async_socket.AsyncSocket(server, 'probe')
    for attr in ('upgraded', 'upgrading', 'closed', 'closing'):
        need(getattr(s, attr) is False, f'engineio AsyncSocket.{attr}', 'starts False')
    need(type(s.queue) is LightQueue, 'engineio AsyncServer.create_queue', 'makes each socket queue')
    need('self.queue.put(pkt)' in _src(async_socket.AsyncSocket.send), 'engineio AsyncSocket.queue',
         'is where send() puts packets')
    need('self.queue.get()' in _src(async_socket.AsyncSocket.poll)
         and 'task_done' in _src(async_socket.AsyncSocket.poll),
         'engineio AsyncSocket.poll', 'takes packets with get()/task_done()')


def test_engineio_reads_ping_interval_for_every_ping():
    need('self.server.ping_interval' in _src(async_socket.AsyncSocket._send_ping),
         'engineio AsyncServer.ping_interval', 'is read on every ping sleep')
    server = _server()
    reads = {server.ping_interval for _ in range(50)}
    need(len(reads) > 1 and max(reads) <= 25, 'engineio AsyncServer.ping_interval',
         'can be a property (spread pings)')


def test_engineio_tornado_handler_uses_the_receive_queue_through_three_methods():
    handler = socketio.get_tornado_handler(socketio.AsyncServer(async_mode='tornado'))
    for name in ('on_message', 'get_next_message', 'on_close'):
        need(name in handler.__dict__, f'engineio tornado Handler.{name}', 'is defined by the driver')
    need('receive_queue.put_nowait(None)' in _src(handler.on_close),
         'engineio tornado Handler.on_close', 'puts None on receive_queue')
    need('get_next_message' in _src(eio_tornado.WebSocket.wait),
         'engineio tornado WebSocket.wait', 'reads through get_next_message')
    need('engineio_server.handle_request(self)' in _src(handler.open),
         'engineio tornado Handler.open', 'hands the websocket to handle_request')


# ------------------------------------------------------------------ socketio

def test_socketio_builds_engineio_through_engineio_server_class():
    from socketio import base_server
    need('self._engineio_server_class()' in _src(base_server.BaseServer.__init__),
         'socketio BaseServer._engineio_server_class', 'builds the engine.io server')
    sio = wire.SocketServer(async_mode='tornado')
    need(type(sio.eio) is wire.EngineIOServer, 'socketio AsyncServer._engineio_server_class',
         'decides the engine.io class')


def test_socketio_sends_the_connect_answer_through_send_packet():
    src = _src(socketio.AsyncServer._handle_connect)
    need('self._send_packet(' in src and 'packet.CONNECT, {' in src,
         'socketio AsyncServer._send_packet', 'sends the CONNECT answer (with its data dict)')
    need('self.environ[eio_sid]' in src, 'socketio AsyncServer.environ',
         'is the handshake environ handed to the connect handler')


@pytest.mark.gen_test
async def test_socketio_rooms_map_sid_to_eio_sid():
    mgr = socketio.AsyncManager()
    mgr.set_server(socketio.AsyncServer(async_mode='tornado'))
    mgr.initialize()
    sid = await mgr.connect('eio-1', '/')
    mgr.basic_enter_room(sid, '/', 'org:1')
    need(dict(mgr.rooms['/']['org:1']) == {sid: 'eio-1'}, 'socketio manager.rooms',
         'maps namespace -> room -> {sid: eio_sid}')


def test_socketio_event_packets_encode_as_the_lean_text():
    """fanout.event_text writes an EVENT as socketio's Packet.encode would (and engine.io's
    MESSAGE adds '4'): payloads of every JSON type, non-ASCII, quotes, no offset."""
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet
    from sidecar.wire.fanout import event_text, lean_encoding_problems
    sio = wire.SocketServer(async_mode='tornado')
    need(lean_encoding_problems(sio) == [], 'socketio Packet.encode', 'gives "2" + compact JSON')
    for event, args in (('prospect:updated', [{'id': '12', 'notes': 'l\u00e0 "x" \\ \n', 'n': None,
                                                'k': [1, -2.5e-07, True, {}]}, '5:9:6~5:10:~44.2']),
                        ('prospect:deleted', [{'id': '1'}]), ('notification', [{'meta': {'€': []}}])):
        pkt = sio_packet.Packet(sio_packet.EVENT, namespace='/', data=[event] + args)
        text = event_text(event, args)
        need(pkt.encode() == text, 'socketio Packet.encode', f'encodes {event} as "2" + compact JSON')
        need(eio_packet.Packet(eio_packet.MESSAGE, text).encode() == '4' + text,
             'engineio Packet.encode', 'prefixes a MESSAGE with "4"')
    fanout = wire.Fanout(sio)
    need(fanout.lean, 'wire Fanout.lean', 'is on with the installed socketio')


# ------------------------------------------------------------------ tornado

def test_tornado_tcpserver_accepts_through_handle_connection():
    import tornado.tcpserver
    params = list(inspect.signature(tornado.tcpserver.TCPServer._handle_connection).parameters)
    need(params == ['self', 'connection', 'address'], 'tornado TCPServer._handle_connection',
         'takes (connection, address)')
    need('self._handle_connection' in _src(tornado.tcpserver.TCPServer.add_sockets),
         'tornado TCPServer.add_sockets', "hands accepted sockets to _handle_connection")
    need('handle_stream(' in _src(tornado.tcpserver.TCPServer._handle_connection),
         'tornado TCPServer._handle_connection', 'wraps the socket and calls handle_stream')


@pytest.mark.gen_test
async def test_tornado_iostream_write_buffer_counts_unsent_bytes():
    a, b = socket.socketpair()
    a.setblocking(False)
    stream = tornado.iostream.IOStream(a)
    try:
        need(isinstance(stream._connecting, bool), 'tornado IOStream._connecting', 'is a bool')
        need(len(stream._write_buffer) == 0, 'tornado IOStream._write_buffer', 'starts empty')
        need(stream.socket is a, 'tornado IOStream.socket', 'is the connected socket')
        stream.write(b'x' * (8 << 20))          # the peer does not read: the kernel fills up
        await asyncio.sleep(0.05)
        need(0 < len(stream._write_buffer) <= 8 << 20, 'tornado IOStream._write_buffer',
             'holds what the kernel has not taken')
    finally:
        stream.close()
        b.close()


def test_tornado_websocket_compressor_is_none_without_deflate():
    import re
    src = _src(tornado.websocket.WebSocketProtocol13)
    need(re.search(r'self\._compressor\b[^=\n]*= None', src) and 'self._compressor.compress' in src,
         'tornado WebSocketProtocol13._compressor', 'is None when deflate is not negotiated')
    need('self.stream' in _src(tornado.websocket.WebSocketProtocol),
         'tornado WebSocketProtocol.stream', 'is the connection stream frames are written to')


# ------------------------------------------------------------------ the whole

def test_the_installed_libraries_run_the_direct_path():
    path = wire.check(wire.SocketServer(async_mode='tornado'))
    assert path.direct, f'wire runs on the public path: {path.problems}'


# ------------------------------------------------------------------ event-driven sessions (session.py)

def test_engineio_stores_each_new_session_in_sockets_before_using_it():
    from engineio import async_server
    src = _src(async_server.AsyncServer._handle_connect)
    made, stored = src.find('async_socket.AsyncSocket(self, sid)'), src.find('self.sockets[sid] = s')
    used = src.find('await s.send(pkt)')
    need(0 <= made < stored < used, 'engineio AsyncServer._handle_connect',
         'builds AsyncSocket(self, sid) and stores it in self.sockets before sending on it')
    need('s.schedule_ping()' in src and 's.handle_get_request(environ)' in src,
         'engineio AsyncServer._handle_connect', 'calls schedule_ping() and handle_get_request()')
    need('self.start_background_task(self._service_task)' in ''.join(src.split()),
         'engineio AsyncServer._service_task', 'is started by _handle_connect')
    shutdown = _src(async_server.AsyncServer.shutdown)
    need('self.service_task_event.set()' in shutdown and 'await self.service_task_handle' in shutdown,
         'engineio AsyncServer.shutdown', 'stops _service_task through service_task_event/_handle')


@pytest.mark.gen_test
async def test_engineio_sessions_become_wire_sockets():
    from sidecar.wire.session import Sessions, WireSocket
    need(not hasattr(async_socket.AsyncSocket, '__slots__'), 'engineio AsyncSocket',
         'has no __slots__ (its class can be swapped for a subclass)')
    server = _server()
    need(isinstance(server.sockets, Sessions), 'engineio BaseServer.__init__',
         'assigns self.sockets (made a Sessions by the wire)')
    s = async_socket.AsyncSocket(server, 'probe')
    server.sockets['probe'] = s
    need(type(s) is WireSocket, 'engineio AsyncServer.sockets', 'receives each new AsyncSocket')


def test_engineio_session_internals_the_wire_socket_overrides():
    src = _src(async_socket.AsyncSocket.receive)
    need('packet.PONG' in src and 'self.schedule_ping()' in src, 'engineio AsyncSocket.receive',
         'calls schedule_ping() on a PONG')
    need('self.last_ping' in _src(async_socket.AsyncSocket.check_ping_timeout),
         'engineio AsyncSocket.check_ping_timeout / last_ping', 'reads last_ping (an unanswered PING)')
    close = _src(async_socket.AsyncSocket.close)
    need('self.closing = True' in close and 'packet.CLOSE' in close and 'self.closed = True' in close
         and 'self.queue.join()' in close, 'engineio AsyncSocket.close',
         'sets closing, sends CLOSE unless abort, sets closed, joins the queue when wait')
    handler = _src(async_socket.AsyncSocket._websocket_handler)
    need('self.connected = True' in handler and 'if self.connected:' in handler,
         'engineio AsyncSocket._websocket_handler', 'marks a websocket-first session connected')
    need("self.tornado_handler = environ['tornado.handler']" in _src(eio_tornado.WebSocket.__call__),
         'engineio tornado WebSocket.tornado_handler', 'is the tornado handler')
    reason = engineio.AsyncServer.reason
    need(hasattr(reason, 'PING_TIMEOUT') and hasattr(reason, 'TRANSPORT_CLOSE'),
         'engineio AsyncServer.reason', 'has PING_TIMEOUT and TRANSPORT_CLOSE')


@pytest.mark.gen_test
async def test_asyncio_queue_put_ends_in_put_nowait():
    q = LightQueue()
    seen = []
    q.on_put = lambda: seen.append(q.qsize())
    await q.put('a')
    q.put_nowait('b')
    need(seen == [1, 2] and unsent_packets(q) == 2, 'asyncio.Queue.put', 'ends in put_nowait()')


# ------------------------------------------------------------------ frames.py, shed_handshake, LazyDeque

def test_tornado_accept_awaits_the_frame_loop_last_and_the_loop_reports_the_close():
    from tornado.websocket import WebSocketProtocol13
    accept = _src(WebSocketProtocol13._accept_connection)
    need(accept.rstrip().endswith('await self._receive_frame_loop()'),
         'tornado WebSocketProtocol13._accept_connection', 'awaits _receive_frame_loop() last')
    need('handler.open(' in accept and accept.find('handler.open(') < accept.find('_receive_frame_loop'),
         'tornado WebSocketProtocol13._accept_connection', 'calls handler.open() before reading')
    loop = _src(WebSocketProtocol13._receive_frame_loop)
    need('self.handler.on_ws_connection_close(self.close_code, self.close_reason)' in loop
         and 'self._abort()' in loop, 'tornado WebSocketProtocol13._receive_frame_loop',
         'aborts on StreamClosedError and ends in handler.on_ws_connection_close')
    frame = _src(WebSocketProtocol13._receive_frame)
    for piece in ('self.params.max_message_size', 'self._handle_message(opcode, data)',
                  '_websocket_mask(self._frame_mask, data)', 'self._decompressor is not None',
                  'self._wire_bytes_in'):
        need(piece in frame or piece in loop or piece in _src(WebSocketProtocol13._read_bytes),
             'tornado WebSocketProtocol13._receive_frame', f'uses {piece} as frames.py does')
    handle = _src(WebSocketProtocol13._handle_message)
    need('self.handler.on_message' in handle and 'self.close(self.close_code)' in handle
         and ('_send_pong(data)' in handle or 'self._write_frame(True, 0xA, data)' in handle),
         'tornado WebSocketProtocol13._handle_message',
         'dispatches messages, echoes a close and answers a ping')
    need(inspect.signature(tornado.iostream.BaseIOStream.read_bytes).parameters.get('partial') is not None,
         'tornado IOStream.read_bytes', 'takes partial=')
    need('bytearray(self.read_chunk_size)' in _src(tornado.iostream.BaseIOStream._read_to_buffer),
         'tornado IOStream.read_chunk_size', 'is the size of the buffer each recv() gets')


@pytest.mark.gen_test
async def test_tornado_iostream_deques_and_what_it_does_with_them():
    from sidecar.wire.queues import LazyDeque, lighten_stream
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    stream = tornado.iostream.IOStream(a)
    try:
        need(type(stream._write_futures) is collections.deque, 'tornado IOStream._write_futures',
             'is a deque')
        need(type(stream._write_buffer._buffers) is collections.deque,
             'tornado IOStream._write_buffer._buffers', 'is a deque')
        need(lighten_stream(stream) and isinstance(stream._write_futures, LazyDeque),
             'tornado IOStream deques', 'can be swapped')
        # a backlog the peer does not read, written in small and large pieces, then drained
        pieces = [bytes([i % 251]) * (1 + (i * 7919) % 70000) for i in range(300)]
        futures = [stream.write(p) for p in pieces]
        await asyncio.sleep(0.05)
        need(len(stream._write_buffer) > 0 and stream._write_futures,
             'tornado IOStream._write_buffer', 'holds the backlog in its chunks')
        want, got = b''.join(pieces), bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(got) < len(want) and loop.time() < deadline:
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await asyncio.gather(*futures)
        need(bytes(got) == want, 'tornado IOStream with LazyDeques', 'writes every byte in order')
        need(not stream._write_futures and len(stream._write_buffer) == 0,
             'tornado IOStream._write_futures', 'empties once everything is written')
        need(stream._write_futures._d is None and stream._write_buffer._buffers._d is None,
             'tornado IOStream deques', 'are emptied through popleft/clear')
    finally:
        stream.close()
        b.close()


def test_tornado_handshake_attributes_are_not_read_once_open():
    from tornado.websocket import WebSocketHandler, WebSocketProtocol13
    # read only by the request's _execute, get() and accept: none of the open-connection paths
    open_paths = ''.join(_src(f) for f in (
        WebSocketHandler.write_message, WebSocketHandler.close, WebSocketHandler.on_connection_close,
        WebSocketHandler.on_ws_connection_close, WebSocketHandler._break_cycles,
        WebSocketProtocol13.write_message, WebSocketProtocol13.close, WebSocketProtocol13._handle_message,
        WebSocketProtocol13._write_frame, tornado.websocket.WebSocketProtocol._abort))
    for name in ('self.ui', '_transforms', '_prepared_future', 'self._headers', 'path_args',
                 'path_kwargs', 'open_args', 'open_kwargs', 'allowed_origins', 'self._write_buffer',
                 'request.connection', 'server_connection', 'request.arguments'):
        need(name not in open_paths.replace('self.ui = None', ''), f'tornado WebSocketHandler {name}',
             'is not read on an open websocket')
    detach = _src(WebSocketHandler._detach_stream)
    need('"write"' in detach and '"finish"' in detach, 'tornado WebSocketHandler._detach_stream',
         'disables write/finish on the handler (they stay instance attributes)')


# ------------------------------------------------------------------ frames.py: WireIOStream

def test_tornado_iostream_handle_events_reads_through_handle_read_and_keeps_read_while_reading():
    src = _src(tornado.iostream.BaseIOStream._handle_events)
    need('self._handle_read()' in src, 'tornado IOStream._handle_events', 'calls _handle_read() on READ')
    need('if self.reading():' in src and 'if self.writing():' in src
         and 'self.io_loop.update_handler(self.fileno(), self._state)' in src,
         'tornado IOStream._handle_events', 're-registers from reading()/writing() into _state')
    need('def reading' in _src(tornado.iostream.BaseIOStream)
         and 'self._read_future is not None' in _src(tornado.iostream.BaseIOStream.reading),
         'tornado IOStream.reading', 'is true while a read Future is pending (_read_future)')
    need('self._state is None' in _src(tornado.iostream.BaseIOStream._add_io_state)
         and 'add_handler' in _src(tornado.iostream.BaseIOStream._add_io_state),
         'tornado IOStream._add_io_state', 'registers the fd for the given events')
    need('self._is_connreset(e)' in _src(tornado.iostream.BaseIOStream._read_to_buffer),
         'tornado IOStream._is_connreset', 'is how a read tells a reset from an error')
    need('self.socket.recv_into(' in _src(tornado.iostream.IOStream.read_from_fd),
         'tornado IOStream.socket', 'is the socket it reads with recv_into()')
    need('self._read_buffer_size' in _src(tornado.iostream.BaseIOStream._find_read_pos),
         'tornado IOStream._read_buffer_size', 'counts the buffered unread bytes')
    need('__slots__' not in vars(tornado.iostream.BaseIOStream)
         and '__slots__' not in vars(tornado.iostream.IOStream),
         'tornado IOStream', 'has no __slots__ (its class can be swapped for WireIOStream)')


def test_tornado_websocket_protocol_counters_and_termination_flags():
    from tornado.websocket import WebSocketProtocol13
    handle = _src(WebSocketProtocol13._handle_message)
    need('self._message_bytes_in += len(data)' in handle, 'tornado WebSocketProtocol13._message_bytes_in',
         'counts the bytes of the messages handled')
    need('self.handler.on_message, decoded' in handle.replace('\n', ' ').replace('  ', ' ')
         or 'self._run_callback(self.handler.on_message, decoded)' in handle,
         'tornado WebSocketProtocol13._handle_message', 'hands a text message to on_message decoded')
    closing = _src(WebSocketProtocol13.is_closing)
    need('self.client_terminated' in closing and 'self.server_terminated' in closing
         and 'self.stream.closed()' in closing, 'tornado WebSocketProtocol13.is_closing',
         'is stream.closed() or client_terminated or server_terminated')


@pytest.mark.gen_test
async def test_tornado_iostream_read_directly_keeps_read_registered_and_reports_the_close():
    from tornado.ioloop import IOLoop
    from sidecar.wire.frames import WireIOStream

    class Reader:
        def __init__(self):
            self.got = bytearray()

        def _wire_received(self, data):
            self.got += data
            return True

    a, b = socket.socketpair()
    a.setblocking(False)
    stream = tornado.iostream.IOStream(a)
    closed = asyncio.Event()
    try:
        stream.__class__ = WireIOStream
        reader = stream._wire_protocol = Reader()
        stream.set_close_callback(closed.set)
        stream._add_io_state(IOLoop.READ)
        for chunk in (b'x' * 7, b'y' * 5000, b'z'):
            b.sendall(chunk)
            await asyncio.sleep(0.02)
        need(bytes(reader.got) == b'x' * 7 + b'y' * 5000 + b'z', 'tornado IOStream._handle_read',
             'is called on every READ event (WireIOStream read every byte, in order)')
        need(stream._state & IOLoop.READ and stream._read_future is None,
             'tornado IOStream._state', 'keeps READ while reading() is true, with no read Future')
        written = stream.write(b'hello')
        await written
        need(b.recv(16) == b'hello', 'tornado IOStream.write', 'still writes on a WireIOStream')
        b.close()
        await asyncio.wait_for(closed.wait(), 5)
        need(stream.closed(), 'tornado IOStream.set_close_callback',
             'is called once a directly-read stream closes at EOF')
    finally:
        stream.close()
        b.close()
