"""The realtime core end to end: CRM write -> trigger -> LISTEN -> Socket.IO client."""
import asyncio
import datetime

import pytest

from sidecar.events import NOTIFICATION_FIELDS, PROSPECT_FIELDS

from conftest import assert_large_prospects_received, make_token, paused_reader, write_large_prospects

pytestmark = pytest.mark.usefixtures('io_loop')


def _iso_with_offset(value):
    parsed = datetime.datetime.fromisoformat(value)
    return parsed.tzinfo is not None


@pytest.mark.gen_test(timeout=60)
async def test_two_users_of_one_org_receive_create_update_delete(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    alice = await clients(sc.url, make_token(1, 11))
    bruno = await clients(sc.url, make_token(1, 12), transports=('polling',))

    pid = database.insert_prospect(1, firstname='Camille', notes='hello')
    database.execute("UPDATE prospects SET status = 'contacted' WHERE id = %s", [pid])
    database.execute('DELETE FROM prospects WHERE id = %s', [pid])

    for client in (alice, bruno):
        events = await client.wait_events(3)
        assert [e[0] for e in events] == ['prospect:created', 'prospect:updated', 'prospect:deleted']
        created, updated, deleted = (e[1] for e in events)
        assert list(created) == list(PROSPECT_FIELDS)
        assert set(updated) == set(PROSPECT_FIELDS)
        assert created['id'] == pid and isinstance(created['id'], str)
        assert created['firstname'] == 'Camille' and created['notes'] == 'hello'
        assert updated['status'] == 'contacted'
        assert _iso_with_offset(created['created_at']) and _iso_with_offset(updated['updated_at'])
        assert deleted == {'id': pid}


@pytest.mark.gen_test(timeout=60)
async def test_other_org_receives_nothing(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    one = await clients(sc.url, make_token(1, 11))
    two = await clients(sc.url, make_token(2, 21))
    pid = database.insert_prospect(1)
    database.execute("UPDATE prospects SET firstname = 'Zed' WHERE id = %s", [pid])
    database.execute('INSERT INTO notifications (organization_id, type, title) VALUES (1, %s, %s)',
                     ['info', 'org one only'])
    await one.wait_events(3)
    # a marker event for org two proves its socket was live all along
    database.insert_prospect(2, firstname='Marker')
    await two.wait_events(1)
    assert [(e[0], e[1].get('firstname')) for e in two.events] == [('prospect:created', 'Marker')]


@pytest.mark.gen_test(timeout=60)
async def test_large_notes_are_delivered(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    notes = 'n' * 100_000
    pid = database.insert_prospect(1, notes=notes)
    (event,) = await c.wait_events(1)
    assert event[0] == 'prospect:created' and event[1]['id'] == pid
    assert event[1]['notes'] == notes


@pytest.mark.gen_test(timeout=60)
async def test_update_of_unpublished_columns_emits_nothing(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    pid = database.insert_prospect(1)
    await c.wait_events(1)
    database.execute('UPDATE prospects SET internal_score = 42 WHERE id = %s', [pid])
    database.execute('UPDATE prospects SET firstname = firstname WHERE id = %s', [pid])
    database.execute("INSERT INTO dress_reservations (prospect_id, dress_code) VALUES (%s, 'A1')", [pid])
    database.execute("UPDATE prospects SET lastname = 'Marker' WHERE id = %s", [pid])
    await c.wait_events(2)
    assert [e[0] for e in c.events] == ['prospect:created', 'prospect:updated']
    assert c.events[1][1]['lastname'] == 'Marker'
    assert 'dress_reservations' not in c.events[1][1] and 'internal_score' not in c.events[1][1]
    # the journal holds no row for the no-op updates either
    assert database.execute('SELECT count(*) FROM crm_realtime.journal')[0][0] == 2


@pytest.mark.gen_test(timeout=60)
async def test_organization_change_is_delete_for_old_and_create_for_new(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    one = await clients(sc.url, make_token(1, 11))
    two = await clients(sc.url, make_token(2, 21))
    pid = database.insert_prospect(1, firstname='Mover')
    await one.wait_events(1)
    database.execute('UPDATE prospects SET organization_id = 2 WHERE id = %s', [pid])
    await one.wait_events(2)
    await two.wait_events(1)
    assert one.events[1][:2] == ('prospect:deleted', {'id': pid})
    assert two.events[0][0] == 'prospect:created'
    assert two.events[0][1]['id'] == pid and two.events[0][1]['firstname'] == 'Mover'


@pytest.mark.gen_test(timeout=60)
async def test_org_ids_compare_as_strings(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    numeric = await clients(sc.url, make_token(7, 71))
    textual = await clients(sc.url, make_token('7', 71))
    database.insert_prospect(7)
    await numeric.wait_events(1)
    await textual.wait_events(1)


@pytest.mark.gen_test(timeout=60)
async def test_notification_to_user_or_whole_organization(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    u11 = await clients(sc.url, make_token(1, 11))
    u12 = await clients(sc.url, make_token(1, 12))
    other_org_same_user_id = await clients(sc.url, make_token(2, 11))
    database.execute("INSERT INTO notifications (organization_id, user_id, type, title, message, meta) "
                     "VALUES (1, 11, 'calendly_prospect_created', 'Nouveau prospect Calendly', 'hi', "
                     "'{\"prospect_id\": \"p1\"}')")
    database.execute("INSERT INTO notifications (organization_id, type, title) VALUES (1, 'broadcast', 'all')")
    await u11.wait_events(2)
    await u12.wait_events(1)
    assert [e[1]['title'] for e in u11.events] == ['Nouveau prospect Calendly', 'all']
    assert [e[1]['title'] for e in u12.events] == ['all']
    personal = u11.events[0][1]
    assert list(personal) == list(NOTIFICATION_FIELDS)
    assert personal['meta'] == {'prospect_id': 'p1'} and isinstance(personal['id'], str)
    database.insert_prospect(2, firstname='Marker')
    await other_org_same_user_id.wait_events(1)
    assert [e[0] for e in other_org_same_user_id.events] == ['prospect:created']


@pytest.mark.gen_test(timeout=60)
async def test_marking_a_notification_seen_emits_nothing(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    database.execute("INSERT INTO notifications (organization_id, type, title) VALUES (1, 't', 'x')")
    await c.wait_events(1)
    database.execute('UPDATE notifications SET seen_at = now()')
    database.insert_prospect(1, firstname='Marker')
    await c.wait_events(2)
    assert [e[0] for e in c.events] == ['notification', 'prospect:created']


@pytest.mark.gen_test(timeout=60)
async def test_one_transaction_many_rows_arrive_in_order(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    with database.connect(autocommit=False) as conn:
        for i in range(50):
            conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, %s)", [f'p{i}'])
        conn.commit()
    await c.wait_events(50)
    assert [e[1]['firstname'] for e in c.events] == [f'p{i}' for i in range(50)]


@pytest.mark.gen_test(timeout=60)
async def test_rolled_back_writes_emit_nothing(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    with database.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'ghost')")
        conn.rollback()
    database.insert_prospect(1, firstname='Marker')
    await c.wait_events(1)
    await asyncio.sleep(0.3)
    assert [e[1]['firstname'] for e in c.events] == ['Marker']


@pytest.mark.gen_test(timeout=60)
async def test_websocket_fast_path_keeps_order_with_polling_and_upgraded_clients(
        database, make_sidecar, clients, node_clients):
    """Direct websocket frames (fanout.py) for websocket-first and upgraded sockets,
    engine.io's queue for polling ones: every client gets everything, in order, once."""
    sc = await make_sidecar(database)
    ws_first = await clients(sc.url, make_token(1, 11))
    # the official client for polling: python-engineio's client refuses a
    # long-poll answer of more than 16 packets (its max_decode_packets)
    polling = await node_clients(sc.url, make_token(1, 12), transports=('polling',))
    upgraded = await node_clients(sc.url, make_token(1, 11), transports=('polling', 'websocket'))
    for c in (polling, upgraded):
        await c.wait_for(lambda n: n.of_type('connect'))
    await asyncio.sleep(0.5)          # let the polling->websocket upgrade finish
    with database.connect(autocommit=False) as conn:
        for i in range(100):
            conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, %s)", [f'p{i}'])
            if i % 10 == 9:
                conn.commit()
    expected = [f'p{i}' for i in range(100)]
    for c in (ws_first, polling, upgraded):
        await c.wait_events(100)
    await asyncio.sleep(0.3)
    for c in (ws_first, polling, upgraded):
        assert [e[1]['firstname'] for e in c.events] == expected
    # both websocket clients (websocket-first and upgraded) are on the direct path
    assert sc.realtime.wire_path.direct
    assert len(sc.realtime.sio.eio.websockets) == 2


def _unsent_bytes(sc) -> int:
    """What tornado still holds for the sidecar's websockets (the kernel took the rest)."""
    total = 0
    for handler in list(sc.realtime.sio.eio.websockets.values()):
        conn = handler.ws_connection
        if conn is not None and not conn.stream.closed():
            total += len(conn.stream._write_buffer)
    return total


@pytest.mark.gen_test(timeout=120)
async def test_a_slow_reader_gets_every_large_event_whole_and_in_order(database, make_sidecar, node_clients):
    """The fan-out hands frames to the socket directly while tornado holds nothing for it;
    once the kernel's buffer is full, the rest queues in tornado behind what it holds.
    (The backlog limit is off here; test_recovery.py covers a client closed for passing it.)"""
    sc = await make_sidecar(database, SIDECAR_MAX_BACKLOG_BYTES='0')
    slow = await paused_reader(sc, node_clients)
    notes = write_large_prospects(database)          # 12 MB in all
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while _unsent_bytes(sc) == 0:
        assert loop.time() < deadline, 'the paused reader never made tornado buffer anything'
        await asyncio.sleep(0.05)
    await slow.send(cmd='unpause')
    await slow.wait_events(120, timeout=60)
    assert_large_prospects_received(slow.events, notes)
    # one websocket from start to end: no frame was torn (a reconnect's recovery would hide it)
    assert len(slow.of_type('connect')) == 1 and slow.of_type('disconnect') == []


@pytest.mark.gen_test(timeout=60)
async def test_pings_are_spread_and_keep_clients_connected(database, make_sidecar, clients, node_clients):
    import json
    from tornado.httpclient import AsyncHTTPClient
    sc = await make_sidecar(database, SIDECAR_PING_INTERVAL_SECONDS='2', SIDECAR_PING_TIMEOUT_SECONDS='2')
    eio = sc.realtime.sio.eio
    # every read is a fresh point of the last tenth of the interval, never above it
    reads = [eio.ping_interval for _ in range(500)]
    assert all(1.8 <= r <= 2.0 for r in reads) and max(reads) - min(reads) > 0.1
    assert eio.ping_timeout == 2
    from sidecar.wire.queues import LightQueue
    # the handshake tells the client at most the configured interval (engine.io
    # truncates it to whole seconds)
    response = await AsyncHTTPClient().fetch(sc.url + '/socket.io/?EIO=4&transport=polling')
    opened = json.loads(response.body.decode()[1:])
    assert opened['pingInterval'] in (1000, 2000) and opened['pingTimeout'] == 2000

    py = await clients(sc.url, make_token(1, 11))
    ws = await node_clients(sc.url, make_token(1, 12), transports=('websocket',))
    polling = await node_clients(sc.url, make_token(1, 11), transports=('polling',))
    for c in (ws, polling):
        await c.wait_for(lambda n: n.of_type('connect'))
    await asyncio.sleep(5)     # a few ping/pong rounds, each answered through the inbox
    database.insert_prospect(1, firstname='After pings')
    for c in (py, ws, polling):
        await c.wait_for(lambda r: [e for e in r.events if e[0] == 'prospect:created'])
    assert py.disconnect_reasons == []
    assert ws.of_type('disconnect') == [] and polling.of_type('disconnect') == []
    # every engine.io socket queues its packets in the light queue
    assert len(eio.sockets) >= 3 and all(type(s.queue) is LightQueue for s in eio.sockets.values())
    assert len(ws.of_type('connect')) == 1 and len(polling.of_type('connect')) == 1


@pytest.mark.gen_test(timeout=60)
async def test_websockets_send_small_frames_without_nagle_delay(database, make_sidecar, clients, node_clients):
    import socket
    sc = await make_sidecar(database)
    await clients(sc.url, make_token(1, 11))
    upgraded = await node_clients(sc.url, make_token(1, 12), transports=('polling', 'websocket'))
    await upgraded.wait_for(lambda n: n.of_type('connect'))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(sc.realtime.sio.eio.websockets) < 2:      # the upgrade registers itself
        assert loop.time() < deadline, 'the polling client never upgraded'
        await asyncio.sleep(0.05)
    for handler in sc.realtime.sio.eio.websockets.values():
        sock = handler.ws_connection.stream.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.gen_test(timeout=30)
async def test_an_update_carries_the_rows_new_updated_at(database, make_sidecar, clients):
    """The reference CRM moves updated_at on a change, as a CRM does; the event carries it."""
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    pid = database.insert_prospect(1, firstname='Ada')
    await c.wait_events(1)
    await asyncio.sleep(0.05)
    database.execute("UPDATE prospects SET status = 'won' WHERE id = %s", [pid])
    await c.wait_events(2)
    created, updated = c.named('prospect:created')[0], c.named('prospect:updated')[0]
    assert updated['status'] == 'won' and updated['updated_at'] > created['updated_at']
