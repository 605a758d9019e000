"""The transport's small parts on their own: the engine.io queue and the websocket inbox."""
import asyncio

import pytest

from sidecar.wire.queues import Inbox, LightQueue

pytestmark = pytest.mark.usefixtures('io_loop')


@pytest.mark.gen_test(timeout=10)
async def test_light_queue_behaves_as_asyncio_queue():
    q = LightQueue()
    assert q.empty() and q.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    for item in range(3):
        q.put_nowait(item)
    await q.put(3)
    assert [q.get_nowait() for _ in range(2)] + [await q.get(), await q.get()] == [0, 1, 2, 3]
    # task_done/join, which engine.io's close(wait=True) relies on, and _unfinished_tasks,
    # which the fan-out reads
    q.put_nowait('x')
    assert q._unfinished_tasks == 5
    for _ in range(4):
        q.task_done()
    joined = asyncio.ensure_future(q.join())
    await asyncio.sleep(0.01)
    assert not joined.done()
    assert q.get_nowait() == 'x'
    q.task_done()
    await asyncio.wait_for(joined, 1)
    # a getter that waits, one that times out (and leaves no waiter behind), a put that wakes
    waiting = asyncio.ensure_future(q.get())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    await asyncio.sleep(0)
    q.put_nowait('late')
    assert await asyncio.wait_for(waiting, 1) == 'late'
    assert len(q._getters) == 0


@pytest.mark.gen_test(timeout=10)
async def test_bounded_light_queue_blocks_puts_until_a_get():
    q = LightQueue(maxsize=1)
    q.put_nowait(1)
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(2)
    blocked = asyncio.ensure_future(q.put(2))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert q.get_nowait() == 1
    await asyncio.wait_for(blocked, 1)
    assert q.get_nowait() == 2


@pytest.mark.gen_test(timeout=10)
async def test_inbox_is_a_single_reader_fifo():
    box = Inbox()
    await box.put('a')
    box.put_nowait('b')
    assert await box.get() == 'a' and await box.get() == 'b'
    reader = asyncio.ensure_future(box.get())
    await asyncio.sleep(0.01)
    assert not reader.done()
    box.put_nowait(None)              # what on_close puts
    assert await asyncio.wait_for(reader, 1) is None
    cancelled = asyncio.ensure_future(box.get())
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0)
    box.put_nowait('after')           # a cancelled reader leaves nothing stale behind
    assert await asyncio.wait_for(box.get(), 1) == 'after' and box.qsize() == 0
