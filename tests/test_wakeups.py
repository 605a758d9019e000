"""Wake-ups without a NOTIFY per commit: while the listener is reading anyway, writers
skip NOTIFY, and the listener keeps reading until the transactions it saw in
progress have ended. Nothing may be lost, duplicated, or left for the idle timer."""
import asyncio
import random
import threading
import time

import psycopg
import pytest

from conftest import make_token

pytestmark = pytest.mark.usefixtures('io_loop')

WRITERS = 8
PER_WRITER = 15


def _writer(database, w, commits, errors):
    rng = random.Random(w)
    try:
        with database.connect(autocommit=False) as conn:
            for i in range(PER_WRITER):
                conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, %s)",
                             [f'{w}-{i}'])
                if rng.random() < 0.3:        # some transactions carry an update too
                    conn.execute("UPDATE prospects SET status = 'seen' WHERE firstname = %s", [f'{w}-{i}'])
                time.sleep(rng.uniform(0, 0.02))   # commits land in random order across writers
                conn.commit()
                commits.append((f'{w}-{i}', time.monotonic()))
    except psycopg.Error as exc:
        errors.append(exc)


@pytest.mark.gen_test(timeout=60)
async def test_eight_writers_in_random_commit_order_nothing_waits_for_the_idle_timer(
        database, make_sidecar, clients):
    # the idle timer is 30 s: a change left for it would miss every deadline below
    sc = await make_sidecar(database, SIDECAR_LISTENER_CHECK_SECONDS='30')
    c = await clients(sc.url, make_token(1, 11))
    watcher = await psycopg.AsyncConnection.connect(database.conninfo, autocommit=True)
    await watcher.execute('LISTEN crm_realtime')
    arrivals = {}
    held = []

    async def track():
        while True:
            now = time.monotonic()
            for event in c.events[len(arrivals):]:
                if event[0] == 'prospect:created':
                    arrivals.setdefault(event[1]['firstname'], now)
                else:
                    arrivals.setdefault(('u', event[1]['firstname'], len(arrivals)), now)
            held.append(sc.listener.following)
            await asyncio.sleep(0.002)

    tracker = asyncio.ensure_future(track())
    commits, errors = [], []
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(loop.run_in_executor(None, _writer, database, w, commits, errors)
                               for w in range(WRITERS)))
        assert errors == []
        total = WRITERS * PER_WRITER
        updates = database.execute("SELECT count(*) FROM prospects WHERE status = 'seen'")[0][0]
        await c.wait_events(total + updates, timeout=3)
        await asyncio.sleep(0.5)
    finally:
        tracker.cancel()
    notified = [n async for n in watcher.notifies(timeout=0.2)]
    await watcher.close()

    created = [e[1]['firstname'] for e in c.events if e[0] == 'prospect:created']
    assert sorted(created) == sorted(f'{w}-{i}' for w in range(WRITERS) for i in range(PER_WRITER))
    assert len(c.events) == total + updates            # exactly once
    # per row: created before its update
    seen = set()
    for name, payload, *_ in c.events:
        if name == 'prospect:created':
            seen.add(payload['firstname'])
        else:
            assert payload['firstname'] in seen
    # each writer's rows in its commit order
    for w in range(WRITERS):
        mine = [n for n in created if n.startswith(f'{w}-')]
        assert mine == [f'{w}-{i}' for i in range(PER_WRITER)]
    latencies = sorted(arrivals[name] - at for name, at in commits)
    assert latencies[-1] < 1.0, latencies[-5:]         # the idle timer is 30 s
    # and it was done without a NOTIFY per commit: the listener followed the writers
    assert any(held)
    assert len(notified) < total, len(notified)


@pytest.mark.gen_test(timeout=60)
async def test_single_writes_arrive_without_the_idle_timer(database, make_sidecar, clients):
    """One write at a time, with pauses that let the listener go idle (lock released):
    each arrives at once, whether by its NOTIFY or by the listener's follow-up read."""
    sc = await make_sidecar(database, SIDECAR_LISTENER_CHECK_SECONDS='30')
    c = await clients(sc.url, make_token(1, 11))
    loop = asyncio.get_running_loop()
    for i in range(5):
        await asyncio.sleep(0.3 if i % 2 else 1.2)    # past young_seconds: nothing left to follow
        await loop.run_in_executor(None, lambda i=i: database.insert_prospect(1, firstname=f's{i}'))
        started = time.monotonic()
        await c.wait_events(i + 1, timeout=3)
        assert time.monotonic() - started < 1.0
    assert [e[1]['firstname'] for e in c.events] == [f's{i}' for i in range(5)]
