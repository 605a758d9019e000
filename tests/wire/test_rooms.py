"""IndexedRoomsManager (sidecar/wire/rooms.py): a disconnect visits the sid's rooms, not every room."""
import pytest
import socketio

from sidecar.wire import SocketServer
from sidecar.wire.rooms import IndexedRoomsManager

pytestmark = pytest.mark.usefixtures('io_loop')


class CountingRooms(dict):
    """A namespace's rooms that count whole-namespace scans (copy, items, iteration)."""
    scans = 0

    def copy(self):
        CountingRooms.scans += 1
        return CountingRooms(self)

    def items(self):
        CountingRooms.scans += 1
        return super().items()

    def __iter__(self):
        CountingRooms.scans += 1
        return super().__iter__()


async def _manager(cls, n):
    mgr = cls()
    mgr.set_server(socketio.AsyncServer(async_mode='tornado'))
    mgr.initialize()
    sids = []
    for i in range(n):
        sid = await mgr.connect(f'eio-{i}', '/')
        mgr.basic_enter_room(sid, '/', f'org:{i % 10}')
        mgr.basic_enter_room(sid, '/', f'user:{i}')
        sids.append(sid)
    mgr.rooms['/'] = CountingRooms(mgr.rooms['/'])
    CountingRooms.scans = 0
    return mgr, sids


@pytest.mark.gen_test
async def test_a_disconnect_does_not_scan_every_room():
    mgr, sids = await _manager(IndexedRoomsManager, 500)
    for sid in sids[:100]:
        await mgr.disconnect(sid, '/')
    assert CountingRooms.scans == 0, f'{CountingRooms.scans} scans of the namespace for 100 disconnects'
    left = mgr.rooms['/']
    assert len(left[None]) == 400 and sids[0] not in left[None]
    assert sum(len(left[f'org:{k}']) for k in range(10)) == 400
    assert f'user:0' not in left and sids[0] not in left and f'user:100' in left
    assert set(mgr.rooms_of['/']) == set(sids[100:])


@pytest.mark.gen_test
async def test_socketio_own_manager_scans_every_room_on_disconnect():
    # what the index is for: the counter sees socketio's scan (so the test above can fail)
    mgr, sids = await _manager(socketio.AsyncManager, 50)
    await mgr.disconnect(sids[0], '/')
    assert CountingRooms.scans >= 1


def test_the_socket_server_uses_the_indexed_manager():
    assert isinstance(SocketServer(async_mode='tornado').manager, IndexedRoomsManager)
    mine = socketio.AsyncManager()
    assert SocketServer(async_mode='tornado', client_manager=mine).manager is mine
