"""Expiries (sidecar/expiry.py): every socket's token expiry on one loop timer."""
import asyncio
import time

import pytest

from sidecar.expiry import Expiries

pytestmark = pytest.mark.usefixtures('io_loop')


@pytest.mark.gen_test(timeout=10)
async def test_expiries_fire_in_order_once_and_follow_moves_and_cancels():
    fired = []
    ex = Expiries(lambda sid: fired.append((sid, time.time())))
    t0 = time.time()
    ex.set('late', t0 + 0.6)
    ex.set('a', t0 + 0.2)
    ex.set('moved', t0 + 0.1)
    ex.set('moved', t0 + 0.4)          # a refresh: the earlier time no longer counts
    ex.set('gone', t0 + 0.3)
    assert ex.pop('gone') and not ex.pop('gone') and 'gone' not in ex
    ex.set('past', t0 - 5)             # already expired: fires at once
    loop = asyncio.get_running_loop()
    assert len([h for h in loop._scheduled if not h.cancelled() and h._callback == ex._fire]) == 1
    await asyncio.sleep(0.9)
    assert [sid for sid, _ in fired] == ['past', 'a', 'moved', 'late']
    at = dict(fired)
    assert at['a'] >= t0 + 0.2 and at['moved'] >= t0 + 0.4 and at['late'] >= t0 + 0.6
    assert at['late'] < t0 + 0.85
    assert len(ex) == 0 and 'late' not in ex


@pytest.mark.gen_test(timeout=10)
async def test_many_refreshes_do_not_grow_the_heap_for_ever():
    ex = Expiries(lambda sid: None)
    t0 = time.time()
    for i in range(1000):
        ex.set('s', t0 + 0.05 + i * 1e-6)
    ex.set('keep', t0 + 60)
    await asyncio.sleep(0.2)
    assert 'keep' in ex and len(ex._heap) <= 64
