"""Every connected socket's token expiry on one loop timer.

A ``call_later`` per socket costs a TimerHandle, a closure and its context
(about 500 bytes with tracemalloc) and an entry in the loop's heap for the
connection's whole life. Here: a dict ``sid -> expires_at`` and a heap of
``(expires_at, sid)``; one timer is armed for the earliest entry. Moving or
cancelling an expiry leaves its old heap entry behind, skipped when it comes
up (the dict says whether it is still the socket's expiry).
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

log = logging.getLogger('crm_realtime.realtime')


class Expiries:
    def __init__(self, on_expire: Callable[[str], None]):
        self._on_expire = on_expire
        self._at: Dict[str, float] = {}
        self._heap: List[Tuple[float, str]] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[float] = None

    def __contains__(self, sid) -> bool:
        return sid in self._at

    def __len__(self) -> int:
        return len(self._at)

    def set(self, sid: str, expires_at: float) -> None:
        """(Re)schedule ``sid`` to expire at ``expires_at`` (epoch seconds)."""
        self._at[sid] = expires_at
        heapq.heappush(self._heap, (expires_at, sid))
        if self._timer_at is None or expires_at < self._timer_at:
            self._arm(expires_at)

    def pop(self, sid: str) -> bool:
        """Forget ``sid``'s expiry; True if it had one."""
        return self._at.pop(sid, None) is not None

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = time.time()
        heap, at = self._heap, self._at
        while heap and heap[0][0] <= now:
            expires_at, sid = heapq.heappop(heap)
            if at.get(sid) == expires_at:
                del at[sid]
                try:
                    self._on_expire(sid)
                except Exception:  # noqa: BLE001 - one socket's failure must not stop the others'
                    log.exception('token expiry handling failed')
        # drop the stale entries at the top, so that a timer is armed only for a live one
        while heap and at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        if len(heap) > 64 and len(heap) > 4 * len(at):     # many refreshes: rebuild
            self._heap = heap = [(t, s) for s, t in at.items()]
            heapq.heapify(heap)
        if heap:
            self._arm(heap[0][0])
