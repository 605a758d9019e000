"""The wire: the one package allowed to touch private parts of engine.io, socketio, tornado, asyncio.

Everything that makes the sidecar's delivery fast or light reaches into
library internals; it all lives here, so that the rest of ``sidecar/`` speaks
only public APIs and ours. ``tests/wire/`` holds a contract test per name
below (it fails naming the name when a release changes its meaning), and
``tests/wire/test_fence.py`` fails if any module outside this package uses one.

Checked against (``setup.cfg`` pins exactly this range; CI runs the lowest and
the highest): python-engineio 4.12.x–4.15.x, python-socketio 5.16.x–5.18.x,
tornado 6.5.x–6.6.x, CPython 3.9–3.13 asyncio.

Private names relied on, and why:

engine.io (``engineio``)
  ``AsyncServer._async`` (driver table: ``websocket``, ``translate_request``):
  wrapped per server to register accepted websockets and to report the peer
  address (engine.py). ``AsyncServer.sockets``: the sessions, for the direct
  path and shutdown. ``AsyncSocket.upgraded``/``upgrading``/``closed``/
  ``closing``/``queue`` and ``_websocket_handler`` (bound, as the driver's
  websocket handler): the ordering argument of fanout.py. ``AsyncServer.
  ping_interval`` read on each ping sleep: made a property (spread pings).
  The tornado driver's handler ``receive_queue``/``on_message``/
  ``get_next_message``/``on_close``: replaced by a lighter inbox.
  Event-driven sessions (session.py): ``AsyncServer._handle_connect`` builds
  each ``AsyncSocket(self, sid)`` and stores it in ``sockets`` before using
  it (``sockets``, assigned in ``BaseServer.__init__``, is a ``Sessions`` that
  swaps the class for ``WireSocket``; ``AsyncSocket`` has no ``__slots__``);
  ``AsyncSocket._websocket_handler`` (overridden for a websocket-first
  session), ``schedule_ping`` (called after connect and by ``receive`` on each
  PONG), ``last_ping`` (read by ``check_ping_timeout``), ``close`` (closing,
  CLOSE unless abort, closed, ``queue.join()``), ``connected``; the driver's
  ``WebSocket.tornado_handler``; ``AsyncServer.reason.PING_TIMEOUT``/
  ``TRANSPORT_CLOSE``; ``AsyncServer._service_task`` (started by
  ``_handle_connect``, stopped by ``shutdown`` through ``service_task_event``
  and ``service_task_handle``): replaced by a sweep every few seconds.
socketio (``socketio``)
  ``AsyncServer._engineio_server_class`` (which engine.io to build),
  ``_send_packet`` (the CONNECT answer gets the recovery ``pid``),
  ``AsyncServer.environ`` (trimmed after connect), ``manager.rooms`` (room
  participants read by the fan-out without a copy per event). The manager's
  ``basic_enter_room``/``basic_leave_room``/``basic_disconnect``/``get_rooms``
  and its ``callbacks``/``pending_connect``/``pending_disconnect``: indexed
  per client so that a disconnect does not walk every room (rooms.py).
  Not a private name but relied on: the text ``Packet.encode`` gives an EVENT
  of namespace '/' ('2' + compact JSON), which fanout.py writes itself once per
  event (compared with the library's at start-up: ``Fanout.lean``).
tornado
  ``WebSocketProtocol._compressor`` (None when deflate is off: raw frames are
  then valid), ``ws_connection.stream`` (raw frames written to it; pings too,
  session.py), ``IOStream._write_buffer`` (unsent bytes: ordering and the
  backlog limit), ``IOStream._connecting``. ``TCPServer._handle_connection`` (what its accept
  callback calls; accept.py accepts itself, to pause instead of spinning when
  the process is out of file descriptors). The frame reader (frames.py):
  ``WebSocketProtocol13._receive_frame_loop`` (overridden; awaited last by
  ``_accept_connection``), ``_handle_message``, ``_abort``,
  ``client_terminated``, ``_decompressor``, ``_wire_bytes_in``,
  ``params.max_message_size``, ``WebSocketHandler.on_ws_connection_close``,
  ``tornado.util._websocket_mask``; ``IOStream.read_bytes(partial=True)``,
  ``IOStream.read_chunk_size`` (lowered to 4 KiB on an open websocket).
  Direct reading (frames.py ``WireIOStream``, the class of an open plain
  stream once tornado's read buffer is empty): ``IOStream._handle_read``
  (overridden; ``_handle_events`` calls it on READ and re-registers from
  ``reading()``/``writing()`` into ``_state``), ``reading()`` (overridden: true
  while the protocol reads, so READ stays registered), ``_read_buffer_size``,
  ``_read_future``, ``_add_io_state``, ``_is_connreset``, ``socket``, no
  ``__slots__`` on ``IOStream`` (class swap); ``set_close_callback`` (public)
  tells the protocol of the close; ``WebSocketProtocol13._message_bytes_in``
  (a lone PONG frame is counted and handed to ``on_message`` without
  ``_handle_message``). Pings (session.py ``_ping``, websocket.py
  ``send_ready_frame``): ``client_terminated``/``server_terminated`` (what
  ``is_closing`` reads).
  An open websocket sheds (websocket.py ``shed_handshake``): the request's
  ``headers``/``arguments``/``query_arguments``/``body_arguments``/``files``/
  ``connection``/``server_connection``, the handler's ``ui``/``_transforms``/
  ``_prepared_future``/``_headers``/``path_args``/``path_kwargs``/
  ``open_args``/``open_kwargs``/``allowed_origins``/``_write_buffer`` (class
  defaults stand in; none is read once open), and swaps ``IOStream.
  _write_futures`` and ``_write_buffer._buffers`` (deques) for ``LazyDeque``
  (queues.py: append, popleft, [0], [-1], iteration, clear, len).
asyncio
  ``Queue._init``/``_get``/``_put`` (documented subclass hooks), ``_getters``,
  ``_putters``, ``_finished._waiters`` (lists instead of deques),
  ``_unfinished_tasks`` (nothing queued and not yet written); ``Queue.put``
  ends in ``put_nowait`` (``LightQueue.on_put``, the event-driven writer).
"""
from .accept import add_guarded_sockets
from .contract import WirePath, check
from .engine import EngineIOServer, SocketServer, trim_environ
from .fanout import NAMESPACE, Fanout
from .websocket import close_websockets, websocket_handler

__all__ = ['add_guarded_sockets', 'EngineIOServer', 'Fanout', 'NAMESPACE', 'SocketServer', 'WirePath', 'check',
           'close_websockets', 'trim_environ', 'websocket_handler']
