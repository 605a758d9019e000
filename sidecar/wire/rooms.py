"""python-socketio's room manager, with an index of each client's rooms.

``BaseManager.basic_disconnect`` finds a leaving client's rooms by copying
and walking *every* room of the namespace. The sidecar has a room per
organization, one per user and one per connection (socketio's sid room), so
with 10,000 clients a disconnect walks about 20,000 rooms, and 2,500 clients
leaving together (a load balancer dropping a replica's sockets, a proxy
restart, a laptop lid closing on a tab farm) cost 50 million steps: seconds
during which the event loop answers nobody and no event goes out
(bench/connections.py measured a 12 s stall at the end of a 10,000-socket run).
``get_rooms`` walks them all too.

``RoomIndex`` keeps, beside socketio's own ``rooms`` structure (which it
leaves exactly as the library builds it), the rooms each client entered, so a
disconnect or a ``get_rooms`` costs what that client's rooms cost.

Private names relied on (versions in the package docstring):
``BaseManager.basic_enter_room``/``basic_leave_room``/``basic_close_room``
(every room change goes through the first two: ``connect`` enters the sid
room and the ``None`` room through ``basic_enter_room``, ``close_room`` leaves
through ``basic_leave_room``), ``basic_disconnect`` (replaced: what it does
besides the room walk is to drop the client's ``callbacks`` and its
``pending_connect`` (socketio 5.17 and later)/``pending_disconnect`` entries,
repeated here), and the
``rooms``/``callbacks``/``pending_connect``/``pending_disconnect`` attributes.
tests/wire/test_contract.py runs this manager and the library's side by side
through the same operations and compares every one of those structures.
"""
from __future__ import annotations

from typing import Dict, Hashable, Tuple

import socketio


class RoomIndex(socketio.AsyncManager):
    """``AsyncManager`` whose disconnect and ``get_rooms`` do not walk every room."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (namespace, sid) -> {room: None}, in the order the rooms were entered
        self._member_of: Dict[Tuple[str, str], Dict[Hashable, None]] = {}

    def basic_enter_room(self, sid, namespace, room, eio_sid=None):
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._member_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid, namespace, room):
        super().basic_leave_room(sid, namespace, room)
        mine = self._member_of.get((namespace, sid))
        if mine is not None:
            mine.pop(room, None)
            if not mine:
                del self._member_of[(namespace, sid)]

    def basic_disconnect(self, sid, namespace, **kwargs):
        if namespace not in self.rooms:
            return
        for room in list(self._member_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        # the rest of the library's basic_disconnect
        self.callbacks.pop(sid, None)
        for pending in (getattr(self, 'pending_connect', None), self.pending_disconnect):
            waiting = pending.get(namespace) if pending is not None else None
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid, namespace):
        return [room for room in self._member_of.get((namespace, sid), ()) if room is not None]
