"""Long sessions (issue 18): a token that expires must not end live updates.

Driven with the official socket.io-client (tests/js/client.mjs) against a real
sidecar and database.
"""
import asyncio
import time

import pytest

from conftest import make_token

pytestmark = [pytest.mark.usefixtures('io_loop'), pytest.mark.node]


def _names(c):
    return [e[1]['firstname'] for e in c.events if e[0] == 'prospect:created']


async def _ack(c, n):
    await c.wait_for(lambda x: len(x.of_type('ack')) >= n)
    return c.of_type('ack')[n - 1]


@pytest.mark.gen_test(timeout=60)
async def test_auth_as_a_function_reconnects_on_its_own_with_a_fresh_token(database, make_sidecar,
                                                                           node_clients):
    """The recommended connectSocket: auth is a function; the SPA keeps the current token."""
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11, exp_in=4), transports=('websocket', 'polling'),
                           authFunction=True, spa=True)
    await c.wait_for(lambda x: x.of_type('connect'))
    await c.send(cmd='auth', token=make_token(1, 11, exp_in=3600))   # the SPA refreshed its token
    await c.wait_for(lambda x: x.of_type('disconnect'), timeout=15)
    assert c.of_type('disconnect')[0]['reason'] == 'io server disconnect'
    await c.wait_for(lambda x: len(x.of_type('connect')) >= 2, timeout=10)
    assert c.of_type('connect_error') == []
    database.insert_prospect(1, firstname='after expiry')
    await c.wait_events(1)
    assert _names(c) == ['after expiry']


@pytest.mark.gen_test(timeout=60)
async def test_refresh_moves_the_expiry_without_reconnecting(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11, exp_in=5), transports=('websocket',))
    await c.wait_for(lambda x: x.of_type('connect'))
    fresh_exp = int(time.time()) + 3600
    await c.send(cmd='emit', event='auth:refresh', data={'token': make_token(1, 11, exp_in=3600)})
    ack = await _ack(c, 1)
    assert ack['error'] is None and ack['response']['ok'] is True
    assert abs(ack['response']['expires_at'] - fresh_exp) <= 2
    database.insert_prospect(1, firstname='before old expiry')
    await asyncio.sleep(6)                          # past the old expiry
    database.insert_prospect(1, firstname='after old expiry')
    await c.wait_events(2)
    assert _names(c) == ['before old expiry', 'after old expiry']
    assert c.of_type('disconnect') == [] and len(c.of_type('connect')) == 1


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize('label,token,reason', [
    ('another organization', lambda: make_token(2, 11, exp_in=3600), 'identity_mismatch'),
    ('another user', lambda: make_token(1, 12, exp_in=3600), 'identity_mismatch'),
    ('expired', lambda: make_token(1, 11, exp_in=-60), 'token_expired'),
    ('bad signature', lambda: make_token(1, 11, secret='another-secret-' + 'y' * 40), 'invalid_signature'),
    ('no token', lambda: None, 'missing_token'),
])
async def test_a_refused_refresh_keeps_the_old_expiry(label, token, reason, database, make_sidecar,
                                                      node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11, exp_in=5), transports=('websocket',))
    await c.wait_for(lambda x: x.of_type('connect'))
    await c.send(cmd='emit', event='auth:refresh', data={'token': token()})
    ack = await _ack(c, 1)
    assert ack['response'] == {'ok': False, 'message': 'Authentication error', 'reason': reason}, label
    # no refresh came: the socket is disconnected at its old expiry, and meanwhile nothing
    # of another organization reached it
    database.insert_prospect(2, firstname='other org')
    await c.wait_for(lambda x: x.of_type('disconnect'), timeout=12)
    assert c.of_type('disconnect')[0]['reason'] == 'io server disconnect'
    assert _names(c) == []
