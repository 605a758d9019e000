"""Recovery when everyone reconnects at once (issue 15): kill -9 under a write stream.

300 official socket.io-client sockets (websocket, polling, and the contract's
['websocket', 'polling']) in 30 organizations, held by three Node processes
(tests/js/storm.mjs), on a real ``crm-realtime serve`` process. A writer keeps
inserting prospects; the sidecar is killed with SIGKILL and restarted on the
same port. Every socket must come back recovered, with every prospect of its
organization exactly once and in commit order, and none may be disconnected by
the server.
"""
import asyncio
import json
import os
import threading
import time

import pytest

from conftest import NODE_DIR, SidecarProcess, make_token, node_available, sidecar_env

pytestmark = pytest.mark.usefixtures('io_loop')

ORGS = list(range(100, 130))
PER_ORG = 10
TRANSPORTS = (['websocket'], ['polling'], ['websocket', 'polling'])


class Storm:
    """One Node process holding many recording sockets."""

    def __init__(self, proc):
        self.proc = proc

    @classmethod
    async def start(cls, url, clients):
        cfg = {'url': url, 'clients': clients, 'concurrency': 25, 'reconnectionDelayMax': 1500}
        proc = await asyncio.create_subprocess_exec(
            'node', str(NODE_DIR / 'storm.mjs'), cwd=str(NODE_DIR),
            env=dict(os.environ, STORM_CONFIG=json.dumps(cfg)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26)
        return cls(proc)

    async def line(self, timeout):
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert raw, 'storm client exited'
        return json.loads(raw)

    async def report(self):
        self.proc.stdin.write(b'report\n')
        await self.proc.stdin.drain()
        msg = await self.line(20)
        assert msg['type'] == 'report'
        return msg['sockets']

    async def close(self):
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'exit\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await self.proc.wait()


class Writer(threading.Thread):
    """Inserts prospects round-robin over ORGS, one commit each, until stopped."""

    def __init__(self, database, every=0.01):
        super().__init__(daemon=True)
        self.database, self.every = database, every
        self.written = {org: [] for org in ORGS}
        self.stop = threading.Event()
        self.errors = []

    def run(self):
        n = 0
        with self.database.connect() as conn:
            while not self.stop.is_set() and n < 5000:
                org = ORGS[n % len(ORGS)]
                name = f'w{n}'
                try:
                    conn.execute('INSERT INTO prospects (organization_id, firstname) VALUES (%s, %s)',
                                 [org, name])
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(repr(exc))
                    return
                self.written[org].append(name)
                n += 1
                time.sleep(self.every)


@pytest.mark.node
@pytest.mark.gen_test(timeout=150)
async def test_every_client_recovers_after_kill_9_with_writes_going_on(database):
    if not node_available():
        pytest.skip('node or tests/js/node_modules missing')
    database.execute('INSERT INTO organizations SELECT g, %s FROM generate_series(100, 129) AS g',
                     ['storm org'])
    env = sidecar_env(database)
    first = SidecarProcess(env).start()
    port = first.port
    second = None
    storms, writer = [], None
    try:
        clients = [{'org': org, 'token': make_token(org, 1000 + i),
                    'transports': TRANSPORTS[i % len(TRANSPORTS)]}
                   for org in ORGS for i in range(PER_ORG)]
        chunks = [clients[i::3] for i in range(3)]
        storms = [await Storm.start(first.url, chunk) for chunk in chunks]
        for storm, chunk in zip(storms, chunks):
            ready = await storm.line(90)
            assert ready == {'type': 'ready', 'connected': len(chunk)}

        writer = Writer(database)
        writer.start()
        await asyncio.sleep(2)
        first.proc.kill()                       # SIGKILL: no goodbye to anyone
        first.proc.wait(5)
        await asyncio.sleep(1)
        second = SidecarProcess(env, port=port).start()
        restarted = time.monotonic()

        # every socket reconnects and is recovered, while writes go on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        while True:
            reports = [await s.report() for s in storms]
            back = sum(1 for r in reports for sock in r if len(sock['connects']) >= 2)
            if back == len(clients):
                break
            assert loop.time() < deadline, f'only {back}/{len(clients)} sockets reconnected'
            await asyncio.sleep(0.5)
        live_after = time.monotonic() - restarted
        await asyncio.sleep(2)
        writer.stop.set()
        writer.join(10)
        assert not writer.errors, writer.errors
        assert sum(len(v) for v in writer.written.values()) > 100

        # quiesce: the last writes reach everyone (the listener reads at least every second)
        deadline = loop.time() + 20
        while True:
            reports = [await s.report() for s in storms]
            socks = [sock for r in reports for sock in r]
            behind = [c for c, sock in zip([c for ch in chunks for c in ch], socks)
                      if sock['names'] != writer.written[c['org']]]
            if not behind or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)

        per_client = list(zip([c for ch in chunks for c in ch], socks))
        lost = dup = disconnected_by_server = not_recovered = 0
        for c, sock in per_client:
            expected = writer.written[c['org']]
            got = sock['names']
            lost += len(set(expected) - set(got))
            dup += len(got) - len(set(got))
            disconnected_by_server += sock['disconnects'].count('io server disconnect')
            not_recovered += sum(1 for r in sock['connects'][1:] if r is not True)
        summary = dict(lost=lost, duplicated=dup, server_disconnects=disconnected_by_server,
                       not_recovered=not_recovered, live_after_restart_s=round(live_after, 1))
        assert summary == dict(summary, lost=0, duplicated=0, server_disconnects=0, not_recovered=0), summary
        for c, sock in per_client:
            assert sock['names'] == writer.written[c['org']], (c['transports'], c['org'])
            assert sock['connects'][0] is False
        # the storm cost the database one read per organization and round, not one per client
        import urllib.request
        with urllib.request.urlopen(second.url + '/metrics', timeout=5) as r:
            metrics = r.read().decode()
        reads = float(next(line.split()[1] for line in metrics.splitlines()
                           if line.startswith('crm_realtime_recovery_reads_total ')))
        assert 0 < reads < len(clients) / 2, f'{reads} journal reads for {len(clients)} recoveries'
        log = second.log()
        assert 'could not catch up' not in log and 'Traceback' not in log
    finally:
        if writer is not None:
            writer.stop.set()
        for s in storms:
            await s.close()
        for p in (first, second):
            if p is not None:
                p.stop()
