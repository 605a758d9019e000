"""Event-driven engine.io sessions (sidecar/wire/session.py) on a real sidecar and real clients.

A raw engine.io client over aiohttp's websocket speaks the protocol by hand, so
that it can stop answering pings; the official python-socketio client counts
what an idle connection holds.
"""
import asyncio
import json
import os
import time

import aiohttp
import pytest

from tests.conftest import NODE_DIR, make_token, node_available

pytestmark = pytest.mark.usefixtures('io_loop')

PING = {'SIDECAR_PING_INTERVAL_SECONDS': '1', 'SIDECAR_PING_TIMEOUT_SECONDS': '1'}


async def _raw_connect(session, sc, token):
    """Open a websocket-first engine.io session and the Socket.IO namespace; returns the ws."""
    url = sc.url.replace('http', 'ws') + '/socket.io/?EIO=4&transport=websocket'
    ws = await session.ws_connect(url)
    opened = await ws.receive_str(timeout=5)
    assert opened.startswith('0'), opened
    await ws.send_str('40' + json.dumps({'token': token}))
    connected = await ws.receive_str(timeout=5)
    assert connected.startswith('40{'), connected
    return ws


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_stops_answering_pings_is_dropped(make_sidecar, database):
    sc = await make_sidecar(database, **PING)
    eio = sc.realtime.sio.eio
    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, sc, make_token())
        t0 = time.monotonic()
        pings, closed_at, got_close_packet = [], None, False
        while closed_at is None and time.monotonic() - t0 < 10:
            msg = await ws.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == '2':
                    pings.append(time.monotonic() - t0)     # never answered
                elif msg.data == '1':
                    got_close_packet = True
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.CLOSING):
                closed_at = time.monotonic() - t0
        assert pings, 'the server never pinged'
        assert closed_at is not None, 'the server kept a client that does not answer pings'
        assert got_close_packet, 'no engine.io CLOSE packet before the websocket closed'
        # ping_interval (at most 1 s) + ping_timeout (1 s) + the wheel's step and some slack
        assert pings[0] + 1.0 <= closed_at + 0.05, (pings, closed_at)
        assert closed_at <= 1.0 + 1.0 + 1.5, (pings, closed_at)
    for _ in range(50):
        if not eio.sockets and not eio.websockets:
            break
        await asyncio.sleep(0.05)
    assert not eio.sockets and not eio.websockets, 'the dropped session is still registered'


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_answers_pings_stays_and_receives(make_sidecar, database):
    sc = await make_sidecar(database, **PING)
    async with aiohttp.ClientSession() as session:
        ws = await _raw_connect(session, sc, make_token(organization_id=1))
        t0, pings = time.monotonic(), 0
        while time.monotonic() - t0 < 4.5:
            try:
                msg = await ws.receive(timeout=0.5)
            except asyncio.TimeoutError:
                continue
            assert msg.type == aiohttp.WSMsgType.TEXT, f'websocket ended: {msg}'
            if msg.data == '2':
                pings += 1
                await ws.send_str('3')
        assert pings >= 3, f'{pings} pings in 4.5 s with a 1 s interval'
        pid = database.insert_prospect(organization_id=1)
        deadline = time.monotonic() + 5
        while True:
            msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith('42'):
                event, payload = json.loads(msg.data[2:])[:2]
                assert (event, payload['id']) == ('prospect:created', pid)
                break
            if msg.data == '2':
                await ws.send_str('3')
        await ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_an_idle_websocket_holds_no_task_or_timer_of_engineio(make_sidecar, database):
    """Per idle websocket: no task and no timer of its own.

    engine.io's own session held five tasks and three timers per idle websocket;
    tornado's frame reader held one more task, the token expiry one more timer
    (now callbacks, frames.py, and one timer for every expiry, expiry.py).
    """
    if not node_available():
        pytest.skip('node or tests/js/node_modules missing: run `npm ci --prefix tests/js`')
    sc = await make_sidecar(database)
    loop = asyncio.get_running_loop()

    def counts():
        return len(asyncio.all_tasks(loop)), len([h for h in loop._scheduled if not h.cancelled()])

    n = 40
    await asyncio.sleep(0.3)
    tasks0, timers0 = counts()
    tokens = [make_token(user_id=100 + i) for i in range(n)]
    proc = await asyncio.create_subprocess_exec(
        'node', str(NODE_DIR / 'idle_many.mjs'), cwd=str(NODE_DIR),
        env=dict(os.environ, CLIENT_CONFIG=json.dumps({'url': sc.url, 'tokens': tokens})),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ready == {'type': 'ready', 'connected': n, 'failed': 0}, ready
        await asyncio.sleep(0.5)
        tasks1, timers1 = counts()
        assert len(sc.realtime.sio.eio.websockets) == n
        assert (tasks1 - tasks0) / n <= 0.1, f'{(tasks1 - tasks0) / n:.2f} tasks per idle websocket'
        assert (timers1 - timers0) / n <= 0.1, f'{(timers1 - timers0) / n:.2f} timers per idle websocket'
        assert len(sc.realtime.sio.eio.pings) >= n, 'the sessions are not on the ping wheel'
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.gen_test(timeout=90)
async def test_an_idle_websocket_holds_under_12_kb_of_python_objects(make_sidecar, database):
    """tracemalloc over 60 official clients: what one idle connection keeps allocated.

    Before frames.py, rooms.py and the handshake shedding this was about 20 KB
    (tornado's suspended handshake coroutines, the HTTP/1 connection objects,
    the stream's empty deques, a timer per token); now about 9 KB.
    """
    import gc
    import tracemalloc
    if not node_available():
        pytest.skip('node or tests/js/node_modules missing: run `npm ci --prefix tests/js`')
    sc = await make_sidecar(database)
    n = 60
    tokens = [make_token(user_id=100 + i, organization_id=1 + i % 3) for i in range(n)]
    await asyncio.sleep(0.3)
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        proc = await asyncio.create_subprocess_exec(
            'node', str(NODE_DIR / 'idle_many.mjs'), cwd=str(NODE_DIR),
            env=dict(os.environ, CLIENT_CONFIG=json.dumps({'url': sc.url, 'tokens': tokens})),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert ready == {'type': 'ready', 'connected': n, 'failed': 0}, ready
            await asyncio.sleep(0.5)
            gc.collect()
            after = tracemalloc.take_snapshot()
            assert len(sc.realtime.sio.eio.websockets) == n
        finally:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
    finally:
        tracemalloc.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    grown = sum(d.size_diff for d in after.filter_traces(ignore).compare_to(
        before.filter_traces(ignore), 'filename'))
    assert grown / n < 12 * 1024, f'{grown / n:.0f} bytes of Python objects per idle websocket'


@pytest.mark.gen_test(timeout=30)
async def test_a_close_packet_from_the_client_closes_its_websocket(database, make_sidecar):
    """engine.io's CLOSE ("1") from the client ends the session and its websocket at once
    (it left the websocket open until the client itself hung up)."""
    from tornado.websocket import websocket_connect
    sc = await make_sidecar(database)
    ws = await websocket_connect(sc.url.replace('http://', 'ws://') + '/socket.io/?EIO=4&transport=websocket')
    assert (await ws.read_message()).startswith('0{')
    ws.write_message('40' + json.dumps({'token': make_token(1, 11)}))
    assert (await ws.read_message()).startswith('40{')
    before = sc.metrics.connected_clients._value.get()
    ws.write_message('1')
    assert await asyncio.wait_for(ws.read_message(), 5) is None      # closed by the server
    deadline = time.monotonic() + 5
    while sc.metrics.connected_clients._value.get() != before - 1:
        assert time.monotonic() < deadline, 'the session did not end'
        await asyncio.sleep(0.05)
