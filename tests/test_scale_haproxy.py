"""Three replicas behind Debian's haproxy with deploy/haproxy.cfg, for real, on loopback.

Three ``crm-realtime serve`` processes on one database, haproxy in front with
the shipped configuration (only the addresses changed, see haproxy_rig.py),
and 300 official Node clients (tests/js/swarm.mjs, three processes of 100) in
30 organizations: a third on websocket, a third on polling, a third with the
contract's ``['websocket', 'polling']``. A writer inserts prospects at a
steady rate while one replica is killed with SIGKILL (or all three are
restarted one at a time with SIGTERM). Then every client must be connected,
have received every prospect of its organization exactly once and in order,
none of another organization, and have been recovered (``socket.recovered``)
at each reconnection, and the server must have disconnected none of them.
"""
import asyncio
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import make_token, node_available
from haproxy_rig import HAProxy, SIDECAR_SERVERS, Swarm, require_haproxy

ORGS = list(range(101, 131))          # 30 organizations
CLIENTS = 300
NODE_PROCESSES = 3
TRANSPORTS = (['websocket'], ['polling'], ['websocket', 'polling'])
WRITES_PER_S = 25
DRAIN_SECONDS = 3                      # > haproxy's inter 1s x fall 2


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + '/metrics', timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^{name} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


class Writer(threading.Thread):
    """Inserts prospects o<org>-<n> round-robin over the organizations at a steady rate."""

    def __init__(self, database, rate=WRITES_PER_S):
        super().__init__(daemon=True)
        self.database, self.rate = database, rate
        self.written = []              # (organization, firstname), committed, in commit order
        self.halt = threading.Event()
        self.error = None

    def run(self):
        try:
            with self.database.connect() as conn:
                n = 0
                start = time.monotonic()
                while not self.halt.is_set():
                    org = ORGS[n % len(ORGS)]
                    name = f'o{org}-{n}'
                    conn.execute('INSERT INTO prospects (organization_id, firstname, lastname) '
                                 'VALUES (%s, %s, %s)', (org, name, 'Scale'))
                    self.written.append((org, name))
                    n += 1
                    self.halt.wait(max(0.0, start + n / self.rate - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self):
        self.halt.set()
        self.join(10)
        assert self.error is None, self.error


@pytest.fixture
def cluster(database, sidecar_process, io_loop):
    require_haproxy()
    if not node_available():
        pytest.fail('node and tests/js/node_modules are required (npm ci --prefix tests/js)') \
            if os.environ.get('CI') else pytest.skip('needs node and tests/js/node_modules')
    with database.connect() as conn:
        for org in ORGS:
            conn.execute('INSERT INTO organizations VALUES (%s, %s)', (org, f'Org {org}'))
    replicas = [sidecar_process(database, SIDECAR_DRAIN_SECONDS=DRAIN_SECONDS,
                                SIDECAR_CALENDLY_FIRST_POLL_SECONDS=3600) for _ in SIDECAR_SERVERS]
    proxy = HAProxy([r.port for r in replicas]).start()
    proxy.wait_states({name: 'UP' for name in SIDECAR_SERVERS})
    swarms = []
    yield database, replicas, proxy, swarms
    io_loop.run_sync(lambda: asyncio.gather(*(s.close() for s in swarms)), timeout=20)
    # SIGTERM to all at once: the drains run side by side
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.terminate()
    for r in replicas:
        r.stop()
        assert 'Traceback' not in r.log(), r.log()
    proxy.stop()


async def start_swarms(cluster):
    database, replicas, proxy, swarms = cluster
    clients = [{'org': ORGS[i % len(ORGS)], 'transports': TRANSPORTS[i % len(TRANSPORTS)]}
               for i in range(CLIENTS)]
    for i, c in enumerate(clients):
        c['token'] = make_token(c['org'], 1000 + i)
    per = CLIENTS // NODE_PROCESSES
    for k in range(NODE_PROCESSES):
        chunk = clients[k * per:(k + 1) * per]
        swarms.append(await Swarm.start(proxy.url, [{'token': c['token'], 'transports': c['transports']}
                                                    for c in chunk]))
    for s in swarms:
        ready = await s.wait_ready(timeout=40)
        assert ready['errors'] == 0, ready
    return clients


async def connected_per_replica(replicas):
    return await asyncio.to_thread(
        lambda: [metric(r.url, 'crm_realtime_connected_clients') if r.proc.poll() is None else None
                 for r in replicas])


async def wait_all_connected(swarms, timeout=30):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        statuses = [await s.ask('status') for s in swarms]
        connected = sum(st['connected'] for st in statuses)
        stranded = sum(st['stranded'] for st in statuses)
        if connected + stranded == CLIENTS:
            return       # the stranded ones fail settle_and_check, with the reason
        if loop.time() > deadline:
            reasons, errors = {}, {}
            for s in swarms:
                for r in (await s.ask('report'))['clients']:
                    if not r['connected']:
                        last = r['disconnects'][-1] if r['disconnects'] else 'never connected'
                        reasons[last] = reasons.get(last, 0) + 1
                        for e in r['errors'][-1:]:
                            errors[e] = errors.get(e, 0) + 1
            raise AssertionError(f'{connected} of {CLIENTS} clients connected after {timeout}s; '
                                 f'last disconnect reasons of the others {reasons}, last errors {errors}')
        await asyncio.sleep(0.2)


async def settle_and_check(clients, swarms, writer, replicas, timeout=30):
    """Wait until every client has its organization's prospects, then assert the goal."""
    expected = {org: [f'prospect:created {name}' for o, name in writer.written if o == org] for org in ORGS}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        records = []
        for s in swarms:
            records.extend((await s.ask('report', timeout=30))['clients'])
        complete = sum(1 for c, r in zip(clients, records)
                       if len([e for e in r['events'] if e.startswith('prospect:')]) >= len(expected[c['org']]))
        if complete == CLIENTS or loop.time() > deadline:
            break
        await asyncio.sleep(0.5)

    lost = duplicated = leaked = out_of_order = not_recovered = server_disconnects = offline = 0
    reconnected = 0
    examples = []
    for c, r in zip(clients, records):
        want = expected[c['org']]
        got = [e for e in r['events'] if e.startswith('prospect:')]
        mine = [e for e in got if e.startswith(f"prospect:created o{c['org']}-")]
        leaked += len(got) - len(mine)
        duplicated += len(mine) - len(set(mine))
        missing = set(want) - set(mine)
        lost += len(missing)
        if not missing and len(mine) == len(set(mine)) and mine != want:
            out_of_order += 1
        server_disconnects += r['disconnects'].count('io server disconnect')
        offline += not r['connected']
        if len(r['connects']) > 1:
            reconnected += 1
            not_recovered += sum(1 for recovered, _ in r['connects'][1:] if not recovered)
        if (missing or r['disconnects'].count('io server disconnect')) and len(examples) < 3:
            examples.append({'org': c['org'], 'transports': c['transports'], 'missing': len(missing),
                             'connects': r['connects'], 'disconnects': r['disconnects'],
                             'errors': r['errors'][-3:]})
    summary = dict(writes=len(writer.written), reconnected=reconnected, lost=lost, duplicated=duplicated,
                   leaked=leaked, out_of_order=out_of_order, not_recovered=not_recovered,
                   server_disconnects=server_disconnects, offline=offline)
    print('scale summary:', summary)
    warnings = [line for r in replicas for line in r.log().splitlines()
                if (' WARNING ' in line or ' ERROR ' in line) and 'tornado.access' not in line]
    goal = dict(summary, lost=0, duplicated=0, leaked=0, out_of_order=0, not_recovered=0,
                server_disconnects=0, offline=0)
    assert summary == goal, \
        f'{summary}; examples: {examples}; the replicas\' last warnings: {warnings[-5:]}'
    return summary


@pytest.mark.gen_test(timeout=150)
async def test_kill_9_one_replica_behind_haproxy(cluster):
    database, replicas, proxy, swarms = cluster
    clients = await start_swarms(cluster)
    spread = await connected_per_replica(replicas)
    assert sum(spread) == CLIENTS and all(n > 0 for n in spread), spread

    writer = Writer(database)
    writer.start()
    try:
        await asyncio.sleep(2)
        victim = max(range(len(replicas)), key=lambda i: spread[i])
        replicas[victim].proc.send_signal(signal.SIGKILL)
        replicas[victim].proc.wait(5)
        killed_at = time.monotonic()
        await wait_all_connected(swarms)
        print(f'{int(spread[victim])} clients of the killed replica back in {time.monotonic() - killed_at:.1f}s')
        # the others took them; then the replica comes back and haproxy sees it up again
        await asyncio.to_thread(proxy.wait_states, {SIDECAR_SERVERS[victim]: 'DOWN'})
        await asyncio.to_thread(replicas[victim].start)
        await asyncio.to_thread(proxy.wait_states, {name: 'UP' for name in SIDECAR_SERVERS})
        await asyncio.sleep(2)
    finally:
        writer.stop()
    await settle_and_check(clients, swarms, writer, replicas)
    # nothing leaked on the servers either: one session per client, on the live replicas
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while sum(await connected_per_replica(replicas)) != CLIENTS and loop.time() < deadline:
        await asyncio.sleep(0.5)
    assert sum(await connected_per_replica(replicas)) == CLIENTS


@pytest.mark.gen_test(timeout=150)
async def test_rolling_restart_behind_haproxy_drains_each_replica(cluster):
    database, replicas, proxy, swarms = cluster
    clients = await start_swarms(cluster)
    writer = Writer(database)
    writer.start()
    try:
        await asyncio.sleep(1)
        for name, replica in zip(SIDECAR_SERVERS, replicas):
            before = (await connected_per_replica([replica]))[0]
            replica.proc.send_signal(signal.SIGTERM)
            # drain: /readyz says so at once, haproxy takes the replica out while
            # it still serves its clients, and only then are they closed
            await asyncio.sleep(0.3)
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, replica.url + '/readyz', timeout=2)
            assert refused.value.code == 503
            await asyncio.to_thread(proxy.wait_states, {name: 'DOWN'}, DRAIN_SECONDS)
            assert replica.proc.poll() is None
            assert (await connected_per_replica([replica]))[0] >= before * 0.9
            status = await asyncio.to_thread(replica.proc.wait, DRAIN_SECONDS + 10)
            assert status == 0, f'{name} exited with {status}:\n{replica.log()[-4000:]}'
            await asyncio.to_thread(replica.start)
            await asyncio.to_thread(proxy.wait_states, {n: 'UP' for n in SIDECAR_SERVERS})
            await wait_all_connected(swarms)
        await asyncio.sleep(1)
    finally:
        writer.stop()
    await settle_and_check(clients, swarms, writer, replicas)
    for replica in replicas:
        assert 'draining: /readyz answers 503' in replica.log()
