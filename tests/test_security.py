"""The sidecar attacked from loopback as a hostile or broken client would (issue 8).

Each test drives a real sidecar with real clients: python-socketio and raw
websockets/HTTP requests made by tornado's own client, which is what an
attacker's script would be.
"""
import asyncio
import json
import logging
import time

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from conftest import Recorder, make_token

pytestmark = pytest.mark.usefixtures('io_loop')


def _ws_url(sc, query):
    return sc.url.replace('http://', 'ws://') + '/socket.io/?' + query


async def _next_message(ws, timeout):
    """The next websocket message, None when the server closed, 'timeout' when nothing came."""
    try:
        return await asyncio.wait_for(ws.read_message(), timeout)
    except asyncio.TimeoutError:
        return 'timeout'


async def _messages_until_closed(ws, timeout):
    got = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await _next_message(ws, max(0.01, deadline - time.monotonic()))
        if msg is None or msg == 'timeout':
            return got, msg
        got.append(msg)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize('transports', [('websocket',), ('polling', 'websocket')],
                         ids=['websocket-first', 'upgraded'])
async def test_a_websocket_with_only_a_stolen_sid_gets_nothing(database, make_sidecar, clients,
                                                               transports):
    sc = await make_sidecar(database)
    victim = await clients(sc.url, make_token(1, 11), transports=transports)
    deadline = time.monotonic() + 5
    while victim.client.eio.current_transport != 'websocket' and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert victim.client.eio.current_transport == 'websocket'
    stolen = victim.client.eio.sid

    attacker = await websocket_connect(_ws_url(sc, f'EIO=4&transport=websocket&sid={stolen}'))
    await asyncio.sleep(0.3)
    database.insert_prospect(1, firstname='secret')
    await victim.wait_events(1)
    assert victim.named('prospect:created')[0]['firstname'] == 'secret'

    got, end = await _messages_until_closed(attacker, 3)
    assert not any('secret' in (m if isinstance(m, str) else '') for m in got), got
    assert end is None, 'the refused websocket was left open'
    assert attacker.close_code is not None

    # the victim's session is intact: it keeps receiving, nothing was taken over
    database.insert_prospect(1, firstname='after')
    await victim.wait_events(2)
    assert victim.client.connected


@pytest.mark.gen_test(timeout=90)
async def test_refused_websockets_are_closed_promptly(database, make_sidecar):
    sc = await make_sidecar(database)
    handler_cls = sc.realtime.websocket_handler
    before = len(handler_cls.live)
    attempts = []
    for i in range(200):
        # an unknown session, or a protocol engine.io refuses after tornado's 101
        query = f'EIO=4&transport=websocket&sid=bogus{i:04d}' if i % 2 else 'EIO=3&transport=websocket'
        attempts.append(websocket_connect(_ws_url(sc, query)))
    sockets = await asyncio.gather(*attempts)
    ends = await asyncio.gather(*[_messages_until_closed(ws, 5) for ws in sockets])
    assert [end for _, end in ends] == [None] * len(sockets)
    assert all(ws.close_code is not None for ws in sockets)
    await asyncio.sleep(0.2)
    assert len(handler_cls.live) == before


@pytest.mark.gen_test(timeout=30)
async def test_a_cross_origin_websocket_is_refused_when_cors_is_unset(database, make_sidecar):
    sc = await make_sidecar(database)
    req = HTTPRequest(_ws_url(sc, 'EIO=4&transport=websocket'),
                      headers={'Origin': 'http://evil.example'})
    with pytest.raises(HTTPClientError) as refused:      # before the upgrade, not after a 101
        await websocket_connect(req)
    assert refused.value.code == 403


async def _polling_handshake(sc):
    http = AsyncHTTPClient()
    r = await http.fetch(sc.url + '/socket.io/?EIO=4&transport=polling')
    body = r.body.decode()
    return json.loads(body[body.index('{'):])['sid']


@pytest.mark.gen_test(timeout=60)
async def test_an_oversized_polling_post_is_refused_without_being_buffered(database, make_sidecar):
    sc = await make_sidecar(database, SIDECAR_MAX_HTTP_BUFFER_BYTES=100_000)
    sid = await _polling_handshake(sc)
    http = AsyncHTTPClient()
    big = b'4' + b'x' * 2_000_000
    started = time.monotonic()
    with pytest.raises(HTTPClientError) as caught:
        await http.fetch(HTTPRequest(sc.url + f'/socket.io/?EIO=4&transport=polling&sid={sid}',
                                     method='POST', body=big, request_timeout=10,
                                     headers={'Content-Type': 'text/plain;charset=UTF-8'}))
    assert caught.value.code == 413, caught.value
    assert time.monotonic() - started < 5

    # chunked: no Content-Length to refuse up front, cut off once the limit is passed
    async def chunks(write):
        for _ in range(40):
            await write(b'x' * 50_000)

    with pytest.raises(HTTPClientError) as caught:
        await http.fetch(HTTPRequest(sc.url + f'/socket.io/?EIO=4&transport=polling&sid={sid}',
                                     method='POST', body_producer=chunks, request_timeout=10,
                                     headers={'Content-Type': 'text/plain;charset=UTF-8'}))
    assert caught.value.code in (413, 599), caught.value

    # under the limit still works: a socket.io CONNECT over polling
    client_sid = await _polling_handshake(sc)
    r = await http.fetch(HTTPRequest(sc.url + f'/socket.io/?EIO=4&transport=polling&sid={client_sid}',
                                     method='POST', body=b'40{"token":"nope"}',
                                     headers={'Content-Type': 'text/plain;charset=UTF-8'}))
    assert r.code == 200


@pytest.mark.gen_test(timeout=60)
async def test_an_oversized_connect_gets_an_error_not_a_hang(database, make_sidecar, node_clients):
    sc = await make_sidecar(database, SIDECAR_MAX_HTTP_BUFFER_BYTES=2000)
    c = await node_clients(sc.url, 'x' * 5000, transports=('polling',))
    await c.wait_for(lambda n: n.of_type('connect_error') or n.of_type('disconnect'), timeout=10)


@pytest.mark.gen_test(timeout=30)
async def test_tokens_and_session_ids_stay_out_of_the_access_log(database, make_sidecar, clients,
                                                                  caplog):
    caplog.set_level(logging.INFO)
    sc = await make_sidecar(database)
    token = make_token(1, 11)
    http = AsyncHTTPClient()
    await http.fetch(sc.url + f'/healthz?token={token}')
    sid = await _polling_handshake(sc)
    polling = await clients(sc.url, token, transports=('polling',))
    database.insert_prospect(1, firstname='x')
    await polling.wait_events(1)
    text = '\n'.join(r.getMessage() for r in caplog.records)
    assert 'GET /healthz' in text          # the access log still says what was asked
    assert token not in text and token.split('.')[0] not in text
    assert sid not in text
    assert polling.client.eio.sid not in text
    # Socket.IO sids neither: sockets are named by a tag in the log
    refused = await clients(sc.url, make_token(1, 11, exp_in=-60), expect_error=True)
    text = '\n'.join(r.getMessage() for r in caplog.records)
    assert 'refused socket s-' in text
    for c in (polling, refused):
        socket_sid = c.client.get_sid('/') or ''
        assert not socket_sid or socket_sid not in text


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize('field', ['offset', 'since'])
async def test_positions_past_the_xid8_range_are_refused_quickly(database, make_sidecar, clients,
                                                                 field, caplog):
    sc = await make_sidecar(database)
    huge = '99999999999999999999:99999999999999999999:'
    started = time.monotonic()
    rec = Recorder(('websocket',))
    auth = {'token': make_token(1, 11)}
    auth.update({'pid': 'abcdefghijkl', 'offset': huge} if field == 'offset' else {'since': huge})
    try:
        await rec.client.connect(sc.url, auth=auth, transports=['websocket'], wait_timeout=5)
    except Exception:  # noqa: BLE001 - 'since' is refused with connect_error
        pass
    try:
        await rec.wait_for(lambda x: x.client.connected or x.connect_error, timeout=5)
        if field == 'since':
            assert rec.connect_error['message'] == 'Cursor expired'
        else:
            assert rec.client.connected
    finally:
        await rec.close()
    assert time.monotonic() - started < 5
    assert 'Traceback' not in caplog.text and 'OverflowError' not in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_an_integer_sub_claim_is_accepted_and_compared_as_text(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, None, sub=11))
    assert c.client.connected
    database.execute("INSERT INTO notifications (organization_id, user_id, type, title) "
                     "VALUES (1, 11, 'info', 'for 11'), (1, 12, 'info', 'for 12')")
    await c.wait_events(1)
    await asyncio.sleep(0.3)
    assert [n['title'] for n in c.named('notification')] == ['for 11']
    # other types stay refused
    refused = await clients(sc.url, make_token(1, None, sub=[11]), expect_error=True)
    assert refused.connect_error['data']['reason'] == 'invalid_token'


@pytest.mark.node
@pytest.mark.gen_test(timeout=90)
async def test_recovery_survives_the_pools_backends_being_terminated(database, make_sidecar,
                                                                     node_clients):
    sc = await make_sidecar(database)
    kinds = {'websocket': ('websocket',), 'polling': ('polling',), 'upgraded': ('polling', 'websocket')}
    cs = {k: await node_clients(sc.url, make_token(1, 11), transports=t) for k, t in kinds.items()}
    for c in cs.values():
        await c.wait_for(lambda n: n.of_type('connect'))
    await asyncio.sleep(0.5)            # the upgrade completes
    database.insert_prospect(1, firstname='seen')
    for c in cs.values():
        await c.wait_events(1)
        await c.send(cmd='hold')
    for c in cs.values():
        await c.wait_for(lambda n: n.of_type('disconnect'))
    missed = [f'missed{i}' for i in range(12)]
    for i, name in enumerate(missed):
        database.insert_prospect(1, firstname=name)
        if i == 5:      # a database restart, a failover, an idle-connection killer
            killed = database.execute(
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'crm-realtime'")[0][0]
            assert killed >= 1
    await asyncio.sleep(1.5)
    for c in cs.values():
        await c.send(cmd='resume')
    for kind, c in cs.items():
        await c.wait_for(lambda n: len(n.of_type('connect')) >= 2)
        assert c.of_type('connect')[1]['recovered'] is True, kind
        await c.wait_events(1 + len(missed))
        await asyncio.sleep(0.3)
        assert [e[1]['firstname'] for e in c.events] == ['seen'] + missed, kind


# --------------------------------------------------------------------------- sessions on polling

POLL = '/socket.io/?EIO=4&transport=polling'


async def _raw_session(sc, auth, source=None):
    """A polling session opened by hand: (sid, CONNECT answer data)."""
    http = AsyncHTTPClient()
    r = await http.fetch(HTTPRequest(sc.url + POLL, network_interface=source))
    body = r.body.decode()
    sid = json.loads(body[body.index('{'):])['sid']
    await http.fetch(HTTPRequest(sc.url + POLL + f'&sid={sid}', method='POST', network_interface=source,
                                 body='40' + json.dumps(auth),
                                 headers={'Content-Type': 'text/plain;charset=UTF-8'}))
    r = await http.fetch(HTTPRequest(sc.url + POLL + f'&sid={sid}', network_interface=source))
    answer = r.body.decode().split('\x1e')[0]     # a replay may share the poll with the answer
    assert answer.startswith('40'), answer
    return sid, json.loads(answer[2:])


@pytest.mark.gen_test(timeout=60)
async def test_a_stolen_polling_sid_from_another_address_gets_nothing(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    victim = await clients(sc.url, make_token(1, 11), transports=('polling',))
    stolen = victim.client.eio.sid
    http = AsyncHTTPClient()
    with pytest.raises(HTTPClientError) as refused:
        await http.fetch(HTTPRequest(sc.url + POLL + f'&sid={stolen}', network_interface='127.0.0.2'))
    assert refused.value.code == 400
    upgrade = HTTPRequest(_ws_url(sc, f'EIO=4&transport=websocket&sid={stolen}'),
                          network_interface='127.0.0.2')
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(upgrade)
    assert refused.value.code == 400
    for i in range(5):
        database.insert_prospect(1, firstname=f'secret{i}')
    await victim.wait_events(5)
    assert [p['firstname'] for p in victim.named('prospect:created')] == [f'secret{i}' for i in range(5)]


@pytest.mark.gen_test(timeout=60)
async def test_a_poll_overlapping_the_sessions_pending_poll_is_refused(database, make_sidecar):
    sc = await make_sidecar(database)
    sid, _ = await _raw_session(sc, {'token': make_token(1, 11)})
    http = AsyncHTTPClient()
    pending = asyncio.ensure_future(http.fetch(sc.url + POLL + f'&sid={sid}', request_timeout=20))
    await asyncio.sleep(0.3)
    assert not pending.done()
    with pytest.raises(HTTPClientError) as refused:     # same address, someone else holding the sid
        await http.fetch(sc.url + POLL + f'&sid={sid}')
    assert refused.value.code == 400
    database.insert_prospect(1, firstname='for the victim')
    r = await asyncio.wait_for(pending, 10)
    assert 'for the victim' in r.body.decode()


@pytest.mark.gen_test(timeout=60)
async def test_a_second_websocket_racing_an_upgrade_gets_nothing(database, make_sidecar):
    sc = await make_sidecar(database)
    sid, _ = await _raw_session(sc, {'token': make_token(1, 11)})
    ws_url = _ws_url(sc, f'EIO=4&transport=websocket&sid={sid}')
    victim = await websocket_connect(ws_url)
    victim.write_message('2probe')
    assert await victim.read_message() == '3probe'      # the victim's upgrade is under way
    attacker = await websocket_connect(ws_url)
    await asyncio.sleep(0.2)
    victim.write_message('5')                           # the victim completes its upgrade
    await asyncio.sleep(0.3)
    database.insert_prospect(1, firstname='secret')
    got, end = await _messages_until_closed(attacker, 3)
    assert not any('secret' in m for m in got if isinstance(m, str)), got
    assert end is None
    seen, _ = await _messages_until_closed(victim, 1)
    assert any('secret' in m for m in seen if isinstance(m, str)), seen


# --------------------------------------------------------------------------- forged positions

@pytest.mark.gen_test(timeout=60)
async def test_an_offset_that_is_not_ours_is_not_recovered_from_the_pids_start(database, make_sidecar):
    sc = await make_sidecar(database)
    token = make_token(1, 11)
    _, first = await _raw_session(sc, {'token': token})
    pid = first['pid']
    database.insert_prospect(1, firstname='seen')
    # a mangled offset: a new pid (recovered === false), not a replay from the pid's start
    _, answer = await _raw_session(sc, {'token': token, 'pid': pid, 'offset': 'not-an-offset'})
    assert answer['pid'] != pid
    # no offset at all (nothing received yet): the pid's start is the position
    _, answer = await _raw_session(sc, {'token': token, 'pid': pid})
    assert answer['pid'] == pid
    # a pid not shaped like ours is never echoed back
    _, answer = await _raw_session(sc, {'token': token, 'pid': 'x' * 5000 + '.' + pid.split('.', 1)[1]})
    assert answer['pid'] != 'x' * 5000 + '.' + pid.split('.', 1)[1]


@pytest.mark.gen_test(timeout=60)
async def test_an_offset_from_the_future_is_refused_at_once_without_a_wakeup_storm(database, make_sidecar):
    sc = await make_sidecar(database, SIDECAR_LISTENER_CHECK_SECONDS='5', SIDECAR_LISTENER_TIMEOUT_SECONDS='5')
    xmax = int(database.execute('SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text')[0][0])
    future = f'{xmax + 10**6}:{xmax + 10**6}:'
    token = make_token(1, 11)
    reads = sc.listener.reads if hasattr(sc.listener, 'reads') else None
    started = time.monotonic()
    answers = await asyncio.gather(*[_raw_session(sc, {'token': token, 'pid': 'abcdefghijkl.' + future,
                                                       'offset': future}) for _ in range(20)])
    assert time.monotonic() - started < 5          # not the 10 s of waiting for the listener
    assert all(a['pid'] != 'abcdefghijkl.' + future for _, a in answers)
    assert sc.replayer.queries <= 2 * len(answers) + 2


@pytest.mark.gen_test(timeout=60)
async def test_the_public_path_sends_nothing_twice_to_a_client_joining_mid_batch(
        database, make_sidecar, clients, monkeypatch):
    """Deliveries that await (the public path): a client held during a batch joins after it."""
    import engineio
    import socketio as sio_lib
    from sidecar import realtime, wire
    monkeypatch.setattr(realtime, 'check', lambda sio: wire.WirePath(False, ['forced by the test']))
    original = engineio.AsyncServer.send_packet

    async def slow_send(self, sid, pkt):
        await asyncio.sleep(0.002)
        return await original(self, sid, pkt)

    monkeypatch.setattr(engineio.AsyncServer, 'send_packet', slow_send)
    sc = await make_sidecar(database)
    for i in range(20):
        await clients(sc.url, make_token(1, 100 + i))
    cursor = json.loads((await AsyncHTTPClient().fetch(sc.url + '/cursor')).body)['cursor']
    database.execute("INSERT INTO prospects (organization_id, firstname) "
                     "SELECT 1, 'p' || g FROM generate_series(1, 30) g")
    deadline = time.monotonic() + 5
    while sc.realtime.recovery._batch_after is None:
        assert time.monotonic() < deadline, 'the batch was never seen in flight'
        await asyncio.sleep(0.001)
    got = []
    late = sio_lib.AsyncClient(reconnection=False)

    @late.on('prospect:created')
    async def on_created(p, *offset):
        got.append(p['firstname'])

    await late.connect(sc.url, auth={'token': make_token(1, 11), 'since': cursor}, transports=['websocket'])
    try:
        deadline = time.monotonic() + 10
        while len(got) < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        database.insert_prospect(1, firstname='after')
        deadline = time.monotonic() + 10
        while 'after' not in got and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # room for a duplicate to show up
    finally:
        await late.disconnect()
    assert got == [f'p{g}' for g in range(1, 31)] + ['after']
