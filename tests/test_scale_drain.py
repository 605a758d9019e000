"""Graceful drain of ``crm-realtime serve`` on SIGTERM (SIDECAR_DRAIN_SECONDS).

On SIGTERM /readyz turns to 503 at once while the connected clients are
still served; only after the drain are their sockets closed, and the
process exits 0. A second signal during the drain stops at once. The same
drain behind haproxy (taken out before the sockets close) is in
tests/test_scale_haproxy.py.
"""
import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import pytest

from conftest import make_token

DRAIN = 3


def readyz(url):
    try:
        with urllib.request.urlopen(url + '/readyz', timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_turns_readyz_to_503_serves_the_drain_then_closes(database, sidecar_process, node_clients):
    sidecar = sidecar_process(database, SIDECAR_DRAIN_SECONDS=DRAIN)
    client = await node_clients(sidecar.url, make_token(1, 11), transports=('websocket',))
    await client.wait_for(lambda n: n.of_type('connect'))
    assert readyz(sidecar.url) == (200, {'status': 'ready'})

    sidecar.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    await asyncio.sleep(0.3)
    assert readyz(sidecar.url) == (503, {'status': 'draining'})
    # still served: a change written during the drain arrives
    database.insert_prospect(1, firstname='Pendant')
    await client.wait_for(lambda n: [e for e in n.events if e[0] == 'prospect:created'], timeout=DRAIN - 1)
    assert not client.of_type('disconnect')

    await client.wait_for(lambda n: n.of_type('disconnect'), timeout=DRAIN + 5)
    assert time.monotonic() - signalled >= DRAIN - 0.1
    assert client.of_type('disconnect')[0]['reason'] == 'transport close'   # so it reconnects
    assert await asyncio.to_thread(sidecar.proc.wait, 10) == 0
    assert 'draining: /readyz answers 503; closing the sockets in 3 s' in sidecar.log()


def test_a_second_signal_stops_at_once(database, sidecar_process):
    sidecar = sidecar_process(database, SIDECAR_DRAIN_SECONDS=60)
    sidecar.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 5
    while readyz(sidecar.url)[0] != 503:
        assert time.time() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert 'second signal: stopping now' in sidecar.log()
