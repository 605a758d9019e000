"""Reads carry only what somebody needs; with nobody connected the listener dozes.

The listener reads only the rows of organizations that have a socket in their
rooms or on hold (listener.py, "Reads carry only what somebody needs"), and
none at all while nobody is connected. These tests hold it to what must not
change: a socket joining while a read that left its organization out is in
flight, a recovering socket of an organization nobody else listens to, and the
first socket after a dormant period all get every change exactly once, on
time.
"""
import asyncio
import threading
import time

import psycopg
import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import make_token
from sidecar import journal
from sidecar.position import Snapshot

pytestmark = pytest.mark.usefixtures('io_loop')


def _firstnames(events, name='prospect:created'):
    return [e[1]['firstname'] for e in events if e[0] == name]


async def _until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        await asyncio.sleep(0.01)


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_joining_while_a_read_that_left_its_org_out_is_in_flight_misses_nothing(
        database, make_sidecar, clients, monkeypatch):
    sc = await make_sidecar(database, SIDECAR_LISTENER_CHECK_SECONDS='30')
    a = await clients(sc.url, make_token(1, 11))
    original = journal.read_since_for
    armed, in_flight, release = False, asyncio.Event(), asyncio.Event()
    seen_orgs = []

    async def slow_read(conn, since, orgs):
        result = await original(conn, since, orgs)     # the snapshot is taken here
        seen_orgs.append(set(orgs))
        if armed and result[1]:          # a read whose range holds the rows written below
            in_flight.set()
            await release.wait()
        return result

    monkeypatch.setattr(journal, 'read_since_for', slow_read)
    await _until(lambda: not sc.listener.dormant)
    # a read begun before the patch (a's connect wakes the listener) runs the original
    # function: let it end, or it may be the one that takes in the rows below, unpaused
    await asyncio.sleep(0.5)
    armed = True
    database.insert_prospect(2, firstname='org2-in-the-read')    # nobody in org 2 yet
    database.insert_prospect(1, firstname='org1-in-the-read')
    await asyncio.wait_for(in_flight.wait(), 5)
    armed = False
    assert seen_orgs[-1] == {'1'}                 # the read in flight left org 2 out
    supplements = sc.listener.supplements
    b = await clients(sc.url, make_token(2, 21))  # joins org 2 while that read is in flight
    release.set()
    await a.wait_events(1)
    await b.wait_events(1)
    assert sc.listener.supplements == supplements + 1
    database.insert_prospect(2, firstname='org2-after')
    await b.wait_events(2)
    await asyncio.sleep(0.3)                      # anything duplicated would have come by now
    # b's stream starts where the listener stood when it connected (before the read
    # in flight), so the row that read left out is b's too: once, then the next one
    assert _firstnames(b.events) == ['org2-in-the-read', 'org2-after']
    assert _firstnames(a.events) == ['org1-in-the-read']


def _writer(database, organization_id, prefix, count, pause, done):
    with database.connect(autocommit=True) as conn:
        for i in range(count):
            conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (%s, %s)",
                         [organization_id, f'{prefix}{i}'])
            time.sleep(pause)
    done.set()


@pytest.mark.parametrize('company', ['alone', 'beside another org'])
@pytest.mark.gen_test(timeout=90)
async def test_a_recovering_socket_of_an_org_nobody_else_listens_to_is_bridged_to_live(
        company, database, make_sidecar, clients, node_clients):
    """Org 5 has one socket, which recovers while org 5 keeps writing: the live batches
    kept for it while it is held must carry org 5's rows, though nobody is in org 5's
    rooms. 'beside another org': a socket of org 1 keeps the listener reading
    (filtered) all along; 'alone': nobody is connected while it is away (dormant)."""
    sc = await make_sidecar(database)
    if company == 'beside another org':
        other = await clients(sc.url, make_token(1, 11))
    c = await node_clients(sc.url, make_token(5, 51), transports=('websocket',))
    await c.wait_for(lambda x: x.of_type('connect'))
    database.insert_prospect(5, firstname='seen')
    await c.wait_events(1)
    await c.send(cmd='hold')
    await c.wait_for(lambda x: x.of_type('disconnect'))
    if company == 'alone':
        await _until(lambda: sc.listener.dormant)
    for i in range(3):
        database.insert_prospect(5, firstname=f'away{i}')
    done = threading.Event()
    loop = asyncio.get_running_loop()
    writing = loop.run_in_executor(None, _writer, database, 5, 'live', 60, 0.01, done)
    await asyncio.sleep(0.1)
    await c.send(cmd='resume')                    # recovers while org 5 is being written
    await c.wait_for(lambda x: len(x.of_type('connect')) >= 2)
    assert c.of_type('connect')[1]['recovered'] is True
    await writing
    await c.wait_events(1 + 3 + 60, timeout=20)
    await asyncio.sleep(0.5)
    assert _firstnames(c.events) == ['seen'] + [f'away{i}' for i in range(3)] + [f'live{i}' for i in range(60)]
    if company == 'beside another org':
        assert other.events == []


@pytest.mark.gen_test(timeout=60)
async def test_nobody_connected_no_reads_no_wakeups_and_the_first_socket_gets_the_next_change_at_once(
        database, make_sidecar, clients):
    # the idle timer is 30 s: a change left for it would miss every deadline below
    sc = await make_sidecar(database, SIDECAR_LISTENER_CHECK_SECONDS='30')
    await _until(lambda: sc.listener.dormant)
    watcher = await psycopg.AsyncConnection.connect(database.conninfo, autocommit=True)
    try:
        await watcher.execute('LISTEN crm_realtime')
        reads = sc.listener.reads
        done = threading.Event()
        await asyncio.get_running_loop().run_in_executor(None, _writer, database, 1, 'dormant', 40, 0.005, done)
        await asyncio.sleep(0.3)
        # the writers found no listener waiting (lock released): no NOTIFY, and no reads
        assert [n async for n in watcher.notifies(timeout=0.2)] == []
        assert sc.listener.reads == reads
        last_txid = database.execute('SELECT max(txid)::text FROM crm_realtime.journal')[0][0]

        # /cursor moves past what was written meanwhile (one snapshot, no rows)
        body = (await AsyncHTTPClient().fetch(sc.url + '/cursor')).body
        import json
        cursor = json.loads(body)['cursor']
        assert Snapshot.parse(cursor).visible(int(last_txid))

        c = await clients(sc.url, make_token(1, 11))
        await _until(lambda: not sc.listener.dormant)
        for i in range(3):
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda i=i: database.insert_prospect(1, firstname=f'next{i}'))
            await c.wait_events(i + 1, timeout=3)
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.2 if i else 1.2)
        await asyncio.sleep(0.3)
        # nothing from the dormant period: the position moved to "now" when it connected
        assert _firstnames(c.events) == ['next0', 'next1', 'next2']

        # and when it leaves, the listener dozes again
        await c.close()
        await _until(lambda: sc.listener.dormant)
    finally:
        await watcher.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_that_leaves_during_its_own_connect_leaves_nothing_behind(
        database, make_sidecar, monkeypatch):
    """The transport closes while the connect handler awaits recovery: nothing may stay behind
    (rooms, the listener's interest, the connected count). On python-socketio 5.18 the sid
    stayed in the manager's rooms for good: the library skips the disconnect handler of a
    socket still connecting, and the handler then failed on the gone session, so any client
    could grow the server's memory by closing each connection right after CONNECT."""
    from tornado.websocket import websocket_connect
    import json
    sc = await make_sidecar(database, SIDECAR_LISTENER_CHECK_SECONDS='30')
    await _until(lambda: sc.listener.dormant)
    entered, release = asyncio.Event(), asyncio.Event()
    original = sc.realtime.recovery.start

    async def held_start(sid, auth):
        entered.set()
        await release.wait()
        return await original(sid, auth)

    monkeypatch.setattr(sc.realtime.recovery, 'start', held_start)
    ws = await websocket_connect(sc.url.replace('http://', 'ws://') +
                                 '/socket.io/?EIO=4&transport=websocket')
    opened = await ws.read_message()
    assert opened.startswith('0{')
    ws.write_message('40' + json.dumps({'token': make_token(1, 11)}))
    await asyncio.wait_for(entered.wait(), 5)
    ws.close()
    await asyncio.sleep(0.5)          # the server sees the close while the handler waits
    release.set()
    await asyncio.sleep(0.5)

    metric = sc.metrics.connected_clients._value.get()
    assert (dict(sc.realtime._interested), dict(sc.realtime._org_of), metric) == ({}, {}, 0)
    assert not any(sc.realtime.sio.manager.rooms.get('/', {}).values())
    await _until(lambda: sc.listener.dormant)


@pytest.mark.parametrize('orgs', [['1'], ['7', '1', '42'], ['a"b', 'c\\d', 'e,f', '{g}', ' h ', 'NULL', 'é']])
def test_the_organization_list_reaches_postgresql_as_it_is(database, orgs):
    """The reads pass organizations as a prebuilt text[] literal: quoting must be exact."""
    literal = journal._text_array(frozenset(orgs))
    got = database.execute('SELECT %s::text[]', (literal,))[0][0]
    assert sorted(got) == sorted(orgs)
