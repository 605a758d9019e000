"""sidecar/wire/rooms.py: the room index, against python-socketio's own manager.

The contract: the same operations leave ``rooms``, ``callbacks``,
``pending_connect`` and ``pending_disconnect`` exactly as the library's
``AsyncManager`` leaves them, and ``get_rooms`` answers the same. The point
of the index: a disconnect touches the leaving client's rooms only.
"""
import random

import pytest
import socketio

from sidecar.wire.rooms import RoomIndex

pytestmark = pytest.mark.usefixtures('io_loop')

NS = '/'


def _managers():
    return [socketio.AsyncServer(async_mode='tornado', client_manager=cls()).manager
            for cls in (socketio.AsyncManager, RoomIndex)]


def _state(m):
    rooms = {ns: {room: dict(members) for room, members in by_room.items()}
             for ns, by_room in m.rooms.items()}
    callbacks = {sid: sorted(k for k in cbs if k != 0) for sid, cbs in m.callbacks.items()}
    pending = (getattr(m, 'pending_connect', None), m.pending_disconnect)
    return rooms, callbacks, [None if p is None else {ns: sorted(v) for ns, v in p.items()}
                              for p in pending]


def _need(same, what):
    assert same, (f'library internal changed: socketio manager {what} no longer behaves as '
                  f'sidecar/wire/rooms.py repeats it; see sidecar/wire/__init__.py')


@pytest.mark.gen_test
async def test_room_index_leaves_the_managers_state_as_the_library_does():
    rnd = random.Random(7)
    lib, ours = _managers()
    sids, ever = {}, {}
    for step in range(2000):
        op = rnd.random()
        if op < 0.25 or not sids:
            eio_sid = f'e{step}'
            got = [await m.connect(eio_sid, NS) for m in (lib, ours)]
            sid = got[0]
            # the two managers generate different sids: keep a map from ours to the library's
            sids[sid] = ever[sid] = got[1]
            continue
        sid = rnd.choice(sorted(sids))
        mine = sids[sid]
        if op < 0.55:
            room = f'org:{rnd.randrange(8)}' if rnd.random() < 0.7 else f'user:{rnd.randrange(40)}'
            await lib.enter_room(sid, NS, room)
            await ours.enter_room(mine, NS, room)
        elif op < 0.7:
            room = rnd.choice(lib.get_rooms(sid, NS) or ['nowhere'])
            await lib.leave_room(sid, NS, room)
            await ours.leave_room(mine, NS, mine if room == sid else room)
        elif op < 0.75:
            lib._generate_ack_id(sid, print)
            ours._generate_ack_id(mine, print)
        elif op < 0.8:
            room = f'org:{rnd.randrange(8)}'
            await lib.close_room(room, NS)
            await ours.close_room(room, NS)
        elif op < 0.85:
            lib.pre_disconnect(sid, NS)
            ours.pre_disconnect(mine, NS)
        else:
            await lib.disconnect(sid, NS)
            await ours.disconnect(mine, NS)
            del sids[sid]
        # a client's own sid room is named after its sid, which differs between the two
        _need(sorted(lib.get_rooms(sid, NS)) ==
              sorted(sid if r == mine else r for r in ours.get_rooms(mine, NS)), 'get_rooms')
    # the sids differ between the two; compare with ours renamed to the library's
    rename = {v: k for k, v in ever.items()}
    rooms_l, cb_l, pend_l = _state(lib)
    rooms_o, cb_o, pend_o = _state(ours)

    def renamed(value):
        if isinstance(value, dict):
            return {rename.get(k, k) if isinstance(k, str) else k: renamed(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted(rename.get(v, v) if isinstance(v, str) else renamed(v) for v in value)
        return rename.get(value, value) if isinstance(value, str) else value

    # sid rooms are named after the sid
    _need(renamed(rooms_o) == rooms_l, 'rooms (enter/leave/close_room/disconnect)')
    _need(renamed(cb_o) == cb_l, 'callbacks (dropped on disconnect)')
    _need([renamed(p) for p in pend_o] == pend_l, 'pending_connect/pending_disconnect')
    assert sids, 'the random walk ended with nobody connected: it compared too little'


class _NoWalk(dict):
    """A namespace's rooms that fail when something copies or walks all of them."""

    def copy(self):
        raise AssertionError('a disconnect copied every room of the namespace')

    def items(self):
        raise AssertionError('a disconnect walked every room of the namespace')


@pytest.mark.gen_test
async def test_a_disconnect_touches_only_the_clients_own_rooms():
    lib, ours = _managers()
    for m in (lib, ours):
        sids = [await m.connect(f'e{i}', NS) for i in range(300)]
        for i, sid in enumerate(sids):
            await m.enter_room(sid, NS, f'org:{i % 10}')
            await m.enter_room(sid, NS, f'user:{i % 10}:{i}')
        m.rooms[NS] = _NoWalk(m.rooms[NS])
        m.victim = sids[5]
    with pytest.raises(AssertionError, match='every room'):
        await lib.disconnect(lib.victim, NS)     # the library's: the walk this module removes
    await ours.disconnect(ours.victim, NS)
    assert ours.get_rooms(ours.victim, NS) == []
    assert ours.victim not in ours.rooms[NS]['org:5'] and 'user:5:5' not in ours.rooms[NS]
    assert len(ours.rooms[NS]['org:5']) == 29 and len(ours.rooms[NS][None]) == 299
