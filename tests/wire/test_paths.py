"""Which wire path runs is said at start-up and in /metrics; the public path delivers too."""
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import make_token

pytestmark = pytest.mark.usefixtures('io_loop')


@pytest.mark.gen_test(timeout=30)
async def test_the_direct_path_is_logged_and_exported(database, make_sidecar, caplog):
    caplog.set_level(logging.INFO, logger='crm_realtime.app')
    sc = await make_sidecar(database)
    assert 'wire: direct fan-out path' in caplog.text
    body = (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body.decode()
    assert 'crm_realtime_wire_path{path="direct"} 1.0' in body


@pytest.mark.gen_test(timeout=60)
async def test_the_public_path_delivers_and_says_why_it_runs(database, make_sidecar, clients,
                                                             monkeypatch, caplog):
    from sidecar import realtime, wire
    monkeypatch.setattr(realtime, 'check', lambda sio: wire.WirePath(False, ['tornado IOStream._write_buffer']))
    caplog.set_level(logging.INFO, logger='crm_realtime.app')
    sc = await make_sidecar(database)
    assert 'wire: public engine.io path (slower)' in caplog.text
    assert 'tornado IOStream._write_buffer' in caplog.text
    body = (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body.decode()
    assert 'crm_realtime_wire_path{path="public"} 1.0' in body
    ws = await clients(sc.url, make_token(1, 11), transports=('websocket',))
    polling = await clients(sc.url, make_token(1, 12), transports=('polling',))
    for i in range(5):
        database.insert_prospect(1, firstname=f'p{i}')
    for c in (ws, polling):
        await c.wait_events(5)
        assert [e['firstname'] for e in c.named('prospect:created')] == [f'p{i}' for i in range(5)]
