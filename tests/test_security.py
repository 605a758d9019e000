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
    try:
        ws = await websocket_connect(req)
    except HTTPClientError as exc:
        assert exc.code == 403
        return
    _, end = await _messages_until_closed(ws, 3)
    assert end is None, 'a refused cross-origin websocket was left open'


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
