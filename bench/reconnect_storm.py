"""Reconnect storm soak: many official clients, a steady write stream, a fault every interval.

    python bench/reconnect_storm.py [--clients 1000] [--orgs 50] [--minutes 10] [--fault-every 60]
                                    [--rate 100] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

A real ``crm-realtime serve`` process, a scratch database (created and dropped
here), and the official socket.io-client in a few Node processes
(tests/js/storm.mjs: websocket, polling and the contract's ['websocket',
'polling'] in turn). A writer inserts prospects at ``--rate`` per second.
Faults, in turn: the LISTEN connection terminated (pg_terminate_backend), the
transports of 10% of the clients dropped, the sidecar killed with SIGKILL and
restarted on the same port. After each fault it prints the time until every
client was live again; at the end: lost, duplicated, leaked (another
organization's event), recovered, server disconnects, journal reads per
recovery, and the sidecar's RSS. Loopback only; bounded by --minutes.
Not a test: figures depend on the machine.
"""
import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.sqlfiles import sql_text  # noqa: E402

NODE_DIR = ROOT / 'tests' / 'js'
SECRET = 'bench-secret-' + 'x' * 40
TRANSPORTS = (['websocket'], ['polling'], ['websocket', 'polling'])


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url, port):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith('SIDECAR_')}
        self.env.update({'SIDECAR_DATABASE_URL': url, 'SIDECAR_JWT_SECRET': SECRET,
                         'SIDECAR_HOST': '127.0.0.1', 'SIDECAR_PORT': str(port),
                         'SIDECAR_LOG_LEVEL': 'WARNING', 'SIDECAR_LISTENER_CHECK_SECONDS': '1',
                         'SIDECAR_LISTENER_MAX_BACKOFF_SECONDS': '1'})
        self.url = f'http://127.0.0.1:{port}'
        self.proc = None
        self.log = open(f'/tmp/reconnect-storm-{port}.log', 'ab')

    def start(self):
        self.proc = subprocess.Popen([sys.executable, '-m', 'sidecar', 'serve'], env=self.env,
                                     cwd=str(ROOT), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + '/readyz', timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise SystemExit('sidecar did not become ready')

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def rss_mib(self):
        with open(f'/proc/{self.proc.pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
        return 0.0

    def metric(self, name):
        with urllib.request.urlopen(self.url + '/metrics', timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + ' ') or line.startswith(name + '{'):
                    return float(line.split()[-1])
        return 0.0


class Storm:
    def __init__(self, proc):
        self.proc = proc

    @classmethod
    async def start(cls, url, clients):
        cfg = {'url': url, 'clients': clients, 'concurrency': 25, 'reconnectionDelayMax': 2000}
        proc = await asyncio.create_subprocess_exec(
            'node', str(NODE_DIR / 'storm.mjs'), cwd=str(NODE_DIR),
            env=dict(os.environ, STORM_CONFIG=json.dumps(cfg)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 28)
        return cls(proc)

    async def send(self, line):
        self.proc.stdin.write((line + '\n').encode())
        await self.proc.stdin.drain()

    async def line(self, timeout):
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), timeout))

    async def report(self):
        await self.send('report')
        return (await self.line(60))['sockets']

    async def close(self):
        try:
            await self.send('exit')
            await asyncio.wait_for(self.proc.wait(), 5)
        except Exception:  # noqa: BLE001
            self.proc.kill()


class Writer(threading.Thread):
    def __init__(self, url, orgs, rate):
        super().__init__(daemon=True)
        self.url, self.orgs, self.every = url, orgs, 1.0 / rate
        self.written = {o: [] for o in orgs}
        self.stop = threading.Event()

    def run(self):
        n = 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_at = time.monotonic()
            while not self.stop.is_set():
                org = self.orgs[n % len(self.orgs)]
                name = f'o{org}-{n}'
                conn.execute('INSERT INTO prospects (organization_id, firstname) VALUES (%s, %s)', [org, name])
                self.written[org].append(name)
                n += 1
                next_at += self.every
                time.sleep(max(0.0, next_at - time.monotonic()))


async def all_live(storms, n_clients, counts, timeout=60):
    """Seconds until every socket has one more connect than in ``counts`` (None: gave up)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        reports = [s for st in storms for s in await st.report()]
        if all(len(r['connects']) > c for r, c in zip(reports, counts)):
            return time.monotonic() - t0, reports
        await asyncio.sleep(0.25)
    return None, reports


async def main(args):
    dbname = f'crm_rt_storm_{uuid.uuid4().hex[:8]}'
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    info = psycopg.conninfo.conninfo_to_dict(args.pg)
    url = f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{dbname}"
    orgs = list(range(1000, 1000 + args.orgs))
    server = Server(url, free_port())
    storms, writer = [], None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql_text('examples/reference_crm.sql'))
            conn.execute(sql_text('install.sql'))
            conn.execute('INSERT INTO organizations SELECT g, %s FROM unnest(%s::int[]) AS g', ['storm', orgs])
        server.start()
        exp = int(time.time()) + 3600 * 4
        clients = [{'org': orgs[i % len(orgs)], 'transports': TRANSPORTS[i % 3],
                    'token': jwt.encode({'sub': str(i), 'organization_id': orgs[i % len(orgs)], 'exp': exp},
                                        SECRET, algorithm='HS256')} for i in range(args.clients)]
        per = max(1, (len(clients) + args.procs - 1) // args.procs)
        chunks = [clients[i:i + per] for i in range(0, len(clients), per)]
        order = [c for ch in chunks for c in ch]
        t0 = time.monotonic()
        storms = [await Storm.start(server.url, ch) for ch in chunks]
        for st in storms:
            assert (await st.line(300))['type'] == 'ready'
        print(f'{len(clients)} clients in {len(orgs)} organizations connected in '
              f'{time.monotonic() - t0:.1f} s; RSS {server.rss_mib():.0f} MiB', flush=True)
        writer = Writer(url, orgs, args.rate)
        writer.start()
        faults = args.faults.split(',')
        end = time.monotonic() + args.minutes * 60
        results, recoveries = [], 0
        k = 0
        while time.monotonic() + args.fault_every < end:
            await asyncio.sleep(args.fault_every)
            fault = faults[k % len(faults)]
            k += 1
            before = [len(r['connects']) for st in storms for r in await st.report()]
            if fault == 'listener':
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                 "datname = current_database() AND application_name = 'crm-realtime listener'")
                results.append((fault, 0.0, 'no client reconnects'))
                print(f'fault {k}: listener terminated', flush=True)
                continue
            if fault == 'drop10':
                for st in storms:
                    await st.send('drop 0.1')
                # the sockets storm.mjs drops: (index in its process * 7919) % 1000 < 100
                picked = [(i * 7919) % 1000 < 100 for ch in chunks for i in range(len(ch))]
                counts = [b if p else -1 for b, p in zip(before, picked)]
                n_dropped = sum(picked)
            else:
                server.kill9()
                await asyncio.sleep(1)
                server.start()
                counts = before
                n_dropped = len(clients)
            took, reports = await all_live(storms, len(clients), counts)
            recoveries += n_dropped
            reads = server.metric('crm_realtime_recovery_reads_total')
            results.append((fault, took, f'{n_dropped} clients, {reads:.0f} journal reads since start'))
            print(f'fault {k}: {fault}: {n_dropped} clients live again in '
                  f'{"never" if took is None else f"{took:.1f} s"}; recovery journal reads so far '
                  f'(this process) {reads:.0f}; RSS {server.rss_mib():.0f} MiB', flush=True)
        writer.stop.set()
        writer.join(10)
        stopped = time.monotonic()
        while True:         # until every client has every event of its organization, or 60 s
            reports = [r for st in storms for r in await st.report()]
            behind = sum(1 for c, r in zip(order, reports) if len(r['names']) < len(writer.written[c['org']]))
            if not behind or time.monotonic() - stopped > 60:
                break
            await asyncio.sleep(0.5)
        print(f'after the writes stopped: {behind} clients still behind after '
              f'{time.monotonic() - stopped:.1f} s', flush=True)
        lost = dup = leaked = not_recovered = server_disc = 0
        shown = 0
        for c, r in zip(order, reports):
            want = writer.written[c['org']]
            got = r['names']
            missing = set(want) - set(got)
            lost += len(missing)
            if missing and shown < args.show_losses:
                shown += 1
                where = sorted(want.index(m) for m in missing)
                print(f"lost by a {'+'.join(c['transports'])} client: {len(missing)} of {len(want)}, "
                      f"at positions {where[:8]}{'...' if len(where) > 8 else ''}; "
                      f"connects {r['connects']}, disconnects {r['disconnects']}", flush=True)
            dup += len(got) - len(set(got))
            leaked += sum(1 for n in got if not n.startswith(f"o{c['org']}-"))
            not_recovered += sum(1 for x in r['connects'][1:] if x is not True)
            server_disc += r['disconnects'].count('io server disconnect')
        total = sum(len(writer.written[c['org']]) for c in order)
        print(json.dumps({'clients': len(clients), 'organizations': len(orgs), 'minutes': args.minutes,
                          'deliveries_expected': total, 'lost': lost, 'duplicated': dup, 'leaked': leaked,
                          'reconnects_not_recovered': not_recovered, 'server_disconnects': server_disc,
                          'rss_mib': round(server.rss_mib(), 1),
                          'faults': [{'fault': f, 'live_again_s': None if t is None else round(t, 1), 'note': n}
                                     for f, t, n in results]}, indent=1))
    finally:
        if writer is not None:
            writer.stop.set()
        for st in storms:
            await st.close()
        server.stop()
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--clients', type=int, default=1000)
    p.add_argument('--orgs', type=int, default=50)
    p.add_argument('--minutes', type=float, default=10)
    p.add_argument('--fault-every', type=float, default=60)
    p.add_argument('--rate', type=float, default=100, help='CRM writes per second')
    p.add_argument('--procs', type=int, default=4, help='Node processes holding the clients')
    p.add_argument('--faults', default='listener,drop10,kill9',
                   help='faults in turn, comma-separated: listener, drop10, kill9')
    p.add_argument('--show-losses', type=int, default=5, help='describe this many clients that lost events')
    p.add_argument('--pg', default='postgresql://postgres@127.0.0.1:5432/postgres')
    asyncio.run(main(p.parse_args()))
