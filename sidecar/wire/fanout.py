"""Fan-out: put one event on the wire of every socket in a room.

This is the hot path (server CPU per delivered event, commit-to-client
latency), kept in one module so it can be made faster without touching the
rest. What it does differently from ``AsyncServer.emit``:

* the Socket.IO packet is encoded once per event, not once per recipient;
* recipients are written to in a plain loop instead of one asyncio task per
  recipient (``AsyncManager.emit`` creates and awaits a task each): an
  Engine.IO socket's ``send`` only appends to that socket's queue, so a task
  buys nothing but scheduling overhead;
* the packet goes straight onto each socket's outgoing queue
  (``put_nowait``), skipping two coroutine frames, a ping-timeout check that
  engine.io's service task makes anyway, and a log call per recipient. The
  queue is engine.io's own, so ordering with its pings and upgrades is kept.
  If a future engine.io changes those internals, ``_direct`` turns off and the
  public ``send_packet`` is used;
* for a websocket with nothing pending in engine.io, the event goes out as one
  websocket frame built once per event and written straight to the socket's
  stream, as Node's socket.io does with pre-encoded frames. That skips, per
  recipient, engine.io's writer-task wake-up (a task and a timer in ``poll``)
  and tornado's ``write_message`` (a frame built and a task created per
  message). Order is kept: the frame is written directly only when the
  socket's engine.io queue has no packet put and not yet written
  (``_unfinished_tasks == 0``: its writer has taken everything and written it
  in the same step); otherwise it joins the queue like any packet;
* when tornado holds no unsent bytes for that stream, the frame is handed to
  the socket with one ``send`` call, skipping the Future and bookkeeping
  ``IOStream.write`` makes per call (about a fifth of the fan-out's CPU in a
  py-spy profile). Whatever the kernel does not take goes through
  ``IOStream.write``, behind nothing, so bytes stay in order;
* each event's socket.io text is encoded once, as one string (``event_text``:
  what socketio's ``Packet.encode`` gives, compared at start-up; otherwise the
  library's packets are used), not as a socketio and an engine.io packet
  object; a packet object is made only for a socket whose engine.io queue
  takes it;
* a websocket whose unsent backlog passes ``SIDECAR_MAX_BACKLOG_BYTES`` (a
  client that stopped reading) is closed at once, its backlog dropped,
  instead of holding memory without bound. The client reconnects and gets
  what it missed from the journal (connection-state recovery), exactly once.

Everything else (rooms, connection bookkeeping) stays python-socketio's.

Private names relied on (versions in the package docstring): socketio's
``manager.rooms`` (namespace -> room -> {sid: eio_sid}); engine.io's
``AsyncServer.sockets`` and a socket's ``upgraded``/``upgrading``/``closed``/
``closing``/``queue`` (``put_nowait``, ``_unfinished_tasks`` via queues.py);
tornado's ``IOStream._write_buffer`` (unsent bytes) and ``_connecting``.
Which path runs (direct or engine.io's public ``send_packet``) is decided once
by ``contract.check`` and shown in the log and ``/metrics``.
"""
from __future__ import annotations

import json
import logging
from typing import Optional

from engineio import packet as eio_packet
from engineio.exceptions import EngineIOError
from tornado.iostream import StreamClosedError
from socketio import packet as sio_packet

from ..events import Delivery
from .queues import unsent_packets
from .websocket import send_frame, text_frame, writable_stream

NAMESPACE = '/'
log = logging.getLogger('crm_realtime.fanout')

#: what socketio's ``Packet.encode`` calls for the JSON part (``json.dumps(data,
#: separators=(',', ':'))``, json being engine.io's, the stdlib's dumps), built once
_dumps = json.JSONEncoder(separators=(',', ':')).encode


def event_text(event: str, args: list) -> str:
    """A socket.io EVENT packet of namespace '/' without binary parts, encoded as socketio's
    ``Packet(EVENT, data=[event] + args, namespace='/').encode()`` does ('2' + JSON),
    without building the packet or walking the data for bytes (JSON payloads have none).
    ``lean_encoding_problems`` compares the two at start-up."""
    return '2' + _dumps([event] + args)


def lean_encoding_problems(sio) -> list:
    """Does ``event_text`` give what the installed socketio would? (empty: yes)."""
    samples = (('prospect:created', [{'id': '1', 'firstname': 'Zoé "Z" \\ <b>', 'n': None,
                                      'meta': {'a': [1, 2.5, True]}}, '1:2:~1:3:~7']),
               ('notification', [{}]), ('x', []))
    for event, args in samples:
        pkt = sio.packet_class(sio_packet.EVENT, namespace=NAMESPACE, data=[event] + args)
        if pkt.encode() != event_text(event, args):
            return ['socketio Packet.encode (EVENT text: "2" + compact JSON)']
    return []


class Fanout:
    def __init__(self, sio, metrics=None, max_backlog: int = 0, direct: bool = True):
        self._sio = sio
        self.max_backlog = max_backlog      # bytes; 0 = no limit
        self._manager = sio.manager
        self._eio = sio.eio
        self._metrics = metrics
        self._direct = direct
        self._websockets = sio.eio.websockets   # eio sid -> accepted tornado handler
        #: encode events with event_text (one string per event, no packet objects)
        self.lean = not lean_encoding_problems(sio)
        self._emitted = {}                      # event name -> its events_emitted child

    def _write_frame(self, socket, eio_sid, frame) -> Optional[bool]:
        """True: written (or queued in tornado); False: not eligible; None: closed as too slow."""
        if frame is None or not socket.upgraded or socket.upgrading \
                or unsent_packets(socket.queue) != 0:
            return False
        handler = self._websockets.get(eio_sid)
        stream = writable_stream(handler) if handler is not None else None
        if stream is None:
            return False
        pending = getattr(stream, '_write_buffer', None)     # tornado's unsent bytes
        if self.max_backlog and pending is not None and len(pending) > self.max_backlog:
            self._close_slow(eio_sid, stream)
            return None
        try:
            send_frame(stream, frame)   # one send(), or behind the bytes tornado still holds
        except StreamClosedError:
            return False
        return True

    def _close_slow(self, eio_sid, stream) -> None:
        handler = self._websockets.get(eio_sid)
        peer = handler.request.remote_ip if handler is not None else '?'
        log.warning('websocket from %s has %d bytes unsent (limit %d): closing it; the client will '
                    'reconnect and catch up from the journal', peer, len(stream._write_buffer),
                    self.max_backlog)
        if self._metrics:
            self._metrics.slow_clients_closed.inc()
        stream.close()      # drops the backlog now; the close reaches engine.io as a disconnect

    def _send_now(self, eio_sid, pkts, frame=None) -> bool:
        """The direct path, synchronous: no coroutine per recipient."""
        socket = self._eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return False
        written = self._write_frame(socket, eio_sid, frame)
        if written is None:         # closed as too slow
            return False
        if not written:
            if pkts.__class__ is str:           # lean: the socket.io text, packet made here
                socket.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, pkts))
                return True
            for p in pkts:
                socket.queue.put_nowait(p)
        return True

    async def _send(self, eio_sid, pkts, frame=None) -> bool:
        if self._direct:
            return self._send_now(eio_sid, pkts, frame)
        try:
            for p in pkts:
                await self._eio.send_packet(eio_sid, p)
        except EngineIOError:
            return False        # closed under us; its disconnect handler cleans up
        return True

    def _encode(self, event: str, args: list):
        pkt = self._sio.packet_class(sio_packet.EVENT, namespace=NAMESPACE, data=[event] + args)
        encoded = pkt.encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]

    async def deliver(self, delivery: Delivery, offset: Optional[str] = None) -> int:
        """Send one delivery to its room; returns the number of sockets written to.

        ``offset``, when given, is appended as the last event argument, which
        is where socket.io-client's connection-state recovery reads it; the
        SPA's handlers take only their first argument and ignore it.
        """
        participants = self._manager.rooms.get(NAMESPACE, {}).get(delivery.room)
        if not participants:
            return 0
        args = [delivery.payload] if offset is None else [delivery.payload, offset]
        if self.lean and self._direct:
            pkts = event_text(delivery.event, args)      # str: see _send_now
            frame = text_frame('4' + pkts)               # engine.io MESSAGE
        else:
            pkts = self._encode(delivery.event, args)
            frame = text_frame(pkts[0].encode()) if len(pkts) == 1 and not pkts[0].binary else None
        sent = 0
        if self._direct:
            send = self._send_now
            for eio_sid in list(participants.values()):
                sent += send(eio_sid, pkts, frame)
        else:
            # copy: a socket may leave the room while we await its queue
            for eio_sid in list(participants.values()):
                sent += await self._send(eio_sid, pkts, frame)
        if self._metrics:
            counter = self._emitted.get(delivery.event)
            if counter is None:
                counter = self._emitted[delivery.event] = self._metrics.events_emitted.labels(delivery.event)
            counter.inc(sent)
        return sent

    async def deliver_to_sid(self, sid: str, delivery: Delivery, offset: Optional[str] = None) -> bool:
        """Send one delivery to one socket (a recovering client's replay); False if it is gone."""
        eio_sid = self._manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return False
        args = [delivery.payload] if offset is None else [delivery.payload, offset]
        if not await self._send(eio_sid, self._encode(delivery.event, args)):
            return False
        if self._metrics:
            self._metrics.events_emitted.labels(delivery.event).inc()
        return True

    def has_listeners(self, room: str) -> bool:
        """Is any socket in ``room``? (Cheap: one dict lookup, no copy.)"""
        return bool(self._manager.rooms.get(NAMESPACE, {}).get(room))

    def join(self, sid: str, rooms) -> None:
        """Put a connected socket in its rooms, synchronously (no batch can slip in between)."""
        for room in rooms:
            self._manager.basic_enter_room(sid, NAMESPACE, room)

    async def drop_transport(self, sid: str) -> None:
        """Close a socket's transport as a network failure would: the client reconnects and recovers.

        A websocket's stream is closed at once (socket.io-client acts on the
        websocket closing, not on engine.io's CLOSE packet); a polling session
        gets engine.io's CLOSE, which the client's next poll collects.
        """
        eio_sid = self._manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        handler = self._websockets.get(eio_sid)
        conn = handler.ws_connection if handler is not None else None
        if conn is not None and not conn.stream.closed():
            conn.stream.close()
            return
        socket = self._eio.sockets.get(eio_sid)
        if socket is not None and not socket.closed:
            await socket.close(wait=False, abort=False)

