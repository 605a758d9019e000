"""Nothing lost: connection-state recovery with the official socket.io-client.

Every test drives the real client (tests/js/client.mjs), a real sidecar and a
real database. "hold" drops the transport as a network failure would and keeps
the client offline until "resume", which reconnects it with its pid and offset.
"""
import asyncio

import psycopg
import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import assert_large_prospects_received, free_port, make_token, paused_reader, write_large_prospects

pytestmark = pytest.mark.usefixtures('io_loop')


def connects(c):
    return c.of_type('connect')


async def _connected(c, n=1):
    await c.wait_for(lambda x: len(connects(x)) >= n)
    return connects(c)[n - 1]


async def _offline(c, n=1):
    await c.wait_for(lambda x: len(x.of_type('disconnect')) >= n)


async def _saw_one_then_went_offline(c, database, organization_id=1, firstname='seen'):
    """The common opening: connected, received one event (so it has an offset), dropped."""
    await _connected(c)
    database.insert_prospect(organization_id, firstname=firstname)
    await c.wait_events(1)
    await c.send(cmd='hold')
    await _offline(c)


def _names(events):
    return [(e[0], e[1].get('firstname', e[1].get('title', e[1].get('id')))) for e in events]


@pytest.mark.gen_test(timeout=90)
async def test_missed_events_are_replayed_once_in_order(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    first = await _connected(c)
    assert first['recovered'] is False
    pid = database.insert_prospect(1, firstname='before')
    await c.wait_events(1)

    await c.send(cmd='hold')
    await _offline(c)
    database.execute("UPDATE prospects SET firstname = 'while-away-1' WHERE id = %s", [pid])
    database.insert_prospect(2, firstname='other org')
    database.execute("INSERT INTO notifications (organization_id, user_id, type, title) "
                     "VALUES (1, 11, 'calendly_prospect_created', 'for me'), "
                     "(1, 12, 'calendly_prospect_created', 'for my colleague')")
    database.insert_prospect(1, firstname='while-away-2')
    database.execute('DELETE FROM prospects WHERE id = %s', [pid])
    await asyncio.sleep(0.3)   # let the live stream pass them by while the client is away

    await c.send(cmd='resume')
    second = await _connected(c, 2)
    assert second['recovered'] is True
    assert sc.metrics.recoveries.labels('ok')._value.get() == 1
    await c.wait_events(5)
    database.insert_prospect(1, firstname='live again')
    await c.wait_events(6)
    await asyncio.sleep(0.5)
    assert _names(c.events) == [
        ('prospect:created', 'before'),
        ('prospect:updated', 'while-away-1'),
        ('notification', 'for me'),
        ('prospect:created', 'while-away-2'),
        ('prospect:deleted', pid),
        ('prospect:created', 'live again'),
    ]
    # every event carried an offset as its last argument; handlers see the payload first
    assert all(isinstance(e[-1], str) and len(e) == 3 for e in c.events)


@pytest.mark.gen_test(timeout=90)
async def test_recovery_across_a_sidecar_restart(database, make_sidecar, node_clients):
    port = free_port()
    sc = await make_sidecar(database, SIDECAR_PORT=port)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _connected(c)
    database.insert_prospect(1, firstname='one')
    await c.wait_events(1)

    await sc.stop()
    await _offline(c)
    database.insert_prospect(1, firstname='during restart 1')
    database.insert_prospect(1, firstname='during restart 2')
    sc2 = await make_sidecar(database, SIDECAR_PORT=port)
    second = await _connected(c, 2)
    assert second['recovered'] is True
    await c.wait_events(3)
    database.insert_prospect(1, firstname='after restart')
    await c.wait_events(4)
    await asyncio.sleep(0.5)
    assert [e[1]['firstname'] for e in c.events] == ['one', 'during restart 1', 'during restart 2',
                                                     'after restart']
    assert sc2.listener.ready


@pytest.mark.gen_test(timeout=90)
async def test_recovery_on_another_replica(database, make_sidecar, node_clients):
    a = await make_sidecar(database)
    b = await make_sidecar(database)
    c = await node_clients(a.url, make_token(1, 11), transports=('websocket',))
    await _saw_one_then_went_offline(c, database, 1, 'seen on A')
    database.insert_prospect(1, firstname='missed 1')
    database.insert_prospect(1, firstname='missed 2')
    await c.send(cmd='resume', url=b.url)
    assert (await _connected(c, 2))['recovered'] is True
    database.insert_prospect(1, firstname='live on B')
    await c.wait_events(4)
    await asyncio.sleep(0.5)
    assert [e[1]['firstname'] for e in c.events] == ['seen on A', 'missed 1', 'missed 2', 'live on B']


@pytest.mark.gen_test(timeout=90)
async def test_reverse_commit_order_is_not_lost(database, make_sidecar, node_clients):
    """T1 takes journal id n, T2 takes n+1 and commits first; the client sees T2,
    drops, T1 commits, the client reconnects: it gets T1 once and T2 not again."""
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _connected(c)
    t1 = psycopg.connect(database.conninfo)
    t2 = psycopg.connect(database.conninfo)
    try:
        t1.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'T1')")
        t2.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'T2')")
        ids = database.execute('SELECT count(*) FROM crm_realtime.journal')
        assert ids == [(0,)]            # neither is visible yet
        t2.commit()
        await c.wait_events(1)
        assert [e[1]['firstname'] for e in c.events] == ['T2']
        await c.send(cmd='hold')
        await _offline(c)
        t1.commit()
    finally:
        t1.close()
        t2.close()
    j = database.execute("SELECT data->>'firstname', id FROM crm_realtime.journal ORDER BY id")
    assert [name for name, _ in j] == ['T1', 'T2']   # T1 really has the smaller id
    await asyncio.sleep(0.3)
    await c.send(cmd='resume')
    assert (await _connected(c, 2))['recovered'] is True
    await c.wait_events(2)
    database.insert_prospect(1, firstname='marker')
    await c.wait_events(3)
    await asyncio.sleep(0.5)
    assert [e[1]['firstname'] for e in c.events] == ['T2', 'T1', 'marker']


@pytest.mark.gen_test(timeout=90)
async def test_reverse_commit_order_live_is_delivered_once(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _connected(c)
    with psycopg.connect(database.conninfo) as t1, psycopg.connect(database.conninfo) as t2:
        t1.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'T1')")
        t2.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'T2')")
        t2.commit()
        await c.wait_events(1)
        t1.commit()
    await c.wait_events(2)
    await asyncio.sleep(1.5)
    assert [e[1]['firstname'] for e in c.events] == ['T2', 'T1']


@pytest.mark.gen_test(timeout=90)
async def test_gap_past_retention_is_not_recovered(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _saw_one_then_went_offline(c, database, 1, 'old')
    database.insert_prospect(1, firstname='pruned before the client came back')
    await asyncio.sleep(0.3)
    assert database.execute("SELECT crm_realtime.prune('0 seconds')")[0][0] == 2
    await c.send(cmd='resume')
    second = await _connected(c, 2)
    assert second['recovered'] is False
    assert sc.metrics.recoveries.labels('too_old')._value.get() == 1
    database.insert_prospect(1, firstname='live')
    await c.wait_events(2)
    await asyncio.sleep(0.5)
    assert [e[1]['firstname'] for e in c.events] == ['old', 'live']


@pytest.mark.gen_test(timeout=90)
async def test_recovering_client_never_gets_another_orgs_events(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(2, 21), transports=('websocket',))
    await _saw_one_then_went_offline(c, database, 2, 'mine')
    for i in range(5):
        database.insert_prospect(1, firstname=f'not mine {i}')
    database.execute("INSERT INTO notifications (organization_id, user_id, type, title) "
                     "VALUES (1, 21, 't', 'same user id, other org')")
    database.insert_prospect(2, firstname='mine too')
    await c.send(cmd='resume')
    assert (await _connected(c, 2))['recovered'] is True
    await c.wait_events(2)
    await asyncio.sleep(0.5)
    assert [e[1]['firstname'] for e in c.events] == ['mine', 'mine too']


@pytest.mark.gen_test(timeout=90)
async def test_recovery_rechecks_the_token(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _connected(c)
    database.insert_prospect(1)
    await c.wait_events(1)
    await c.send(cmd='hold')
    await _offline(c)
    await c.send(cmd='auth', token=make_token(1, 11, exp_in=-5))
    await c.send(cmd='resume')
    await c.wait_for(lambda x: x.of_type('connect_error'))
    assert c.of_type('connect_error')[0]['message'] == 'Authentication error'
    assert len(connects(c)) == 1


@pytest.mark.gen_test(timeout=90)
async def test_since_cursor_gives_everything_after_it(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    resp = await AsyncHTTPClient().fetch(sc.url + '/cursor')
    import json
    cursor = json.loads(resp.body)['cursor']
    database.insert_prospect(1, firstname='after the cursor')
    await asyncio.sleep(0.3)
    c = await node_clients(sc.url, transports=('websocket',),
                           auth={'token': make_token(1, 11), 'since': cursor})
    await _connected(c)
    await c.wait_events(1)
    assert [e[1]['firstname'] for e in c.events] == ['after the cursor']


@pytest.mark.gen_test(timeout=60)
async def test_bad_offsets_are_not_recovered(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    for auth in ({'pid': 'abcdefgh1234', 'offset': "1:2:'; DROP TABLE prospects; --"},
                 {'pid': 'x', 'offset': '5:3:'}):
        c = await node_clients(sc.url, transports=('websocket',),
                               auth={'token': make_token(1, 11), **auth})
        assert (await _connected(c))['recovered'] is False
    database.insert_prospect(1)
    await c.wait_events(1)


@pytest.mark.gen_test(timeout=60)
async def test_prune_job_keeps_the_retention_window(database, make_sidecar):
    sc = await make_sidecar(database, SIDECAR_JOURNAL_RETENTION_HOURS='1')
    assert sc.scheduler.get_job('journal-prune') is not None
    database.insert_prospect(1, firstname='old')
    database.insert_prospect(1, firstname='recent')
    database.execute("UPDATE crm_realtime.journal SET recorded_at = now() - interval '2 hours' "
                     "WHERE data->>'firstname' = 'old'")
    assert await sc.prune_journal() == 1
    assert database.execute("SELECT data->>'firstname' FROM crm_realtime.journal") == [('recent',)]


@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_stops_reading_is_closed_and_catches_up_from_the_journal(
        database, make_sidecar, node_clients):
    """Past SIDECAR_MAX_BACKLOG_BYTES of unsent frames the websocket is closed (memory stays
    bounded); the official client reconnects, recovers, and has every event once, in order."""
    sc = await make_sidecar(database, SIDECAR_MAX_BACKLOG_BYTES=str(1_000_000))
    slow = await paused_reader(sc, node_clients)
    notes = write_large_prospects(database)          # 12 MB in all
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while b'crm_realtime_slow_clients_closed_total 1.0' not in \
            (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body:
        assert loop.time() < deadline, 'the backlog never passed the limit'
        await asyncio.sleep(0.1)
    await slow.send(cmd='unpause')
    await slow.wait_for(lambda n: len(n.of_type('connect')) >= 2 and len(n.events) >= 120, timeout=60)
    connects = slow.of_type('connect')
    assert len(connects) == 2 and connects[1]['recovered'] is True
    assert_large_prospects_received(slow.events, notes)
