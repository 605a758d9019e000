"""Light replacements for the per-connection queues of engine.io and its tornado driver.

Private names relied on (see the package docstring for versions):
``asyncio.Queue._init/_get/_put`` (the documented subclass hooks, as
PriorityQueue uses them), ``asyncio.Queue._getters``, ``_putters``,
``_finished._waiters`` (swapped for lists) and ``_unfinished_tasks`` (read by
the fan-out's ordering check, see fanout.py); ``Queue.put`` ending in
``put_nowait`` (so ``LightQueue.on_put`` sees every packet).
"""
from __future__ import annotations

import asyncio
import collections
from typing import List, Optional


class _Fifo(list):
    """A list with the one deque method asyncio's Queue and Event call on their waiters."""
    __slots__ = ()

    def popleft(self):
        return self.pop(0)


def light_queue_supported() -> bool:
    """True when asyncio.Queue still keeps its waiters in the deques LightQueue replaces."""
    q = asyncio.Queue()
    finished = getattr(q, '_finished', None)
    return (isinstance(getattr(q, '_getters', None), collections.deque)
            and isinstance(getattr(q, '_putters', None), collections.deque)
            and isinstance(getattr(finished, '_waiters', None), collections.deque)
            and isinstance(getattr(q, '_unfinished_tasks', None), int))


class LightQueue(asyncio.Queue):
    """``asyncio.Queue`` with list storage: same behaviour, about 2.8 KB less per instance.

    Each engine.io socket has one for its outgoing packets; it holds a few
    packets at most, and the fan-out writes most events around it. The waiter
    deques are swapped only when present with the expected type (checked once,
    at import), so a Python that changes them gets a plain queue.
    """

    #: called after each put (session.py's event-driven writer); None: a plain queue
    on_put = None

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize)
        if _SWAP_WAITERS:
            self._getters = _Fifo()
            self._putters = _Fifo()
            self._finished._waiters = _Fifo()

    def put_nowait(self, item):
        # asyncio's put() ends in put_nowait(); the count is up before the writer runs
        super().put_nowait(item)
        on_put = self.on_put
        if on_put is not None:
            on_put()

    def _init(self, maxsize):
        self._queue = _Fifo()

    def _get(self):
        return self._queue.pop(0)

    def _put(self, item):
        self._queue.append(item)


_SWAP_WAITERS = light_queue_supported()


def unsent_packets(queue) -> Optional[int]:
    """Packets put on an engine.io socket queue and not yet taken by its writer.

    ``None`` when the queue does not expose the count (the fan-out then never
    writes around the queue).
    """
    n = getattr(queue, '_unfinished_tasks', None)
    return n if isinstance(n, int) else None


class Inbox:
    """An unbounded single-reader FIFO: what engine.io's driver needs of its receive queue.

    Four deques (about 3 KB per connection) for what is one reader and a
    handful of client messages (pongs, acks).
    """
    __slots__ = ('_items', '_waiter')

    def __init__(self):
        self._items: List[object] = []
        self._waiter: Optional[asyncio.Future] = None

    def put_nowait(self, item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def put(self, item) -> None:
        self.put_nowait(item)

    async def get(self):
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def qsize(self) -> int:
        return len(self._items)


class LazyDeque:
    """A deque that exists only while it holds something (an empty ``collections.deque`` is 760 bytes).

    Put in place of an idle IOStream's two deques (its write futures and its
    write buffer's chunks), which are empty for nearly all of a websocket's
    life. Offers what tornado's IOStream does with them: ``append``,
    ``popleft``, ``[0]``/``[-1]``, iteration, ``clear``, ``len`` and truth;
    the deque is made on the first append and dropped when emptied, so a
    lagging client's backlog still drains in O(1) per chunk.
    """
    __slots__ = ('_d',)

    def __init__(self, items=None):
        self._d = collections.deque(items) if items else None

    def append(self, item) -> None:
        d = self._d
        if d is None:
            d = self._d = collections.deque()
        d.append(item)

    def popleft(self):
        d = self._d
        if d is None:
            raise IndexError('pop from an empty deque')
        item = d.popleft()
        if not d:
            self._d = None
        return item

    def __getitem__(self, index):
        d = self._d
        if d is None:
            raise IndexError('deque index out of range')
        return d[index]

    def __len__(self) -> int:
        d = self._d
        return 0 if d is None else len(d)

    def __bool__(self) -> bool:
        return self._d is not None

    def __iter__(self):
        d = self._d
        return iter(()) if d is None else iter(d)

    def clear(self) -> None:
        self._d = None


def lighten_stream(stream) -> bool:
    """Swap an IOStream's two deques for ``LazyDeque``s; False (nothing changed) if they are not deques."""
    futures = getattr(stream, '_write_futures', None)
    chunks = getattr(getattr(stream, '_write_buffer', None), '_buffers', None)
    if type(futures) is not collections.deque or type(chunks) is not collections.deque:
        return False
    stream._write_futures = LazyDeque(futures)
    stream._write_buffer._buffers = LazyDeque(chunks)
    return True
