"""The sidecar's CPU per journal change when few or no clients need it, before and after.

    python bench/idle_cost.py [--changes 20000] [--rows 50] [--rounds 2] [--baseline REF]
                              [--scenarios none,other,one] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

On a scratch database (sql/examples/reference_crm.sql + this checkout's sql/install.sql,
created and dropped here), `crm-realtime serve` of this checkout and of git ref
--baseline (default main; its sidecar/ only, so both read the same journal) runs in
turn while one connection writes --changes prospects in statements of --rows rows
(INSERT ... SELECT, each statement its own transaction, as fast as it can), spread over
organizations 1..10. Scenarios:

  none   no client connected
  other  one websocket client of organization 99 (no row is for it)
  one    one websocket client of organization 1 (a tenth of the rows are for it; the
         run checks that it got every one of them, exactly once)

Printed per run and as the median of --rounds (A B B A order): the sidecar process's
CPU (utime+stime from /proc, from just before the first write to 0.5 s after the last
one has been read) divided by the changes written, in µs, and the same for the
sidecar's PostgreSQL backends (the listener and the pool: what it costs the CRM's
database),. Loopback only; bounded;
the scratch database is dropped. Not a test: figures depend on the machine.
"""
import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))
from host_cost import Sidecar  # noqa: E402
from trigger_cost import ScratchDB, cpu_seconds  # noqa: E402

SECRET = 'bench-secret-' + 'x' * 40
WRITE_SQL = ("INSERT INTO prospects (organization_id, firstname, lastname, email, status, notes) "
             "SELECT mod(i, 10) + 1, 'Idle' || i, 'Cost', 'idle' || i || '@example.com', 'new', "
             "repeat('n', 400) FROM generate_series(%s::int, %s::int) AS i")


class Client:
    """One python-socketio websocket client in a thread of its own, counting events."""

    def __init__(self, url, org):
        import socketio
        self.events = 0
        self.ids = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        token = jwt.encode({'organization_id': org, 'sub': '1', 'exp': int(time.time()) + 3600},
                           SECRET, algorithm='HS256')
        self._client = socketio.AsyncClient(reconnection=False)

        @self._client.on('prospect:created')
        async def created(payload, *offset):
            self.events += 1
            self.ids.append(payload['id'])

        async def main():
            await self._client.connect(url, auth={'token': token}, transports=['websocket'],
                                       wait_timeout=10)
            self._ready.set()

        self._thread = threading.Thread(target=self._run, args=(main,), daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError('the bench client could not connect')

    def _run(self, main):
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(main())
        self._loop.run_forever()

    def close(self):
        fut = asyncio.run_coroutine_threadsafe(self._client.disconnect(), self._loop)
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001 - the sidecar may be gone already
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def backends(conn, dbname):
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name LIKE 'crm-realtime%%'", [dbname]).fetchall()
    return [r[0] for r in rows]


def backend_cpu(pids):
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def run_one(db, conn, root, scenario, args, workdir, first_id):
    conn.execute('TRUNCATE prospects CASCADE')
    conn.execute('TRUNCATE crm_realtime.journal')
    sc = Sidecar(root, db.url, workdir)
    client = None
    try:
        base_url = sc.url.replace('/readyz', '')
        if scenario == 'other':
            client = Client(base_url, 99)
        elif scenario == 'one':
            client = Client(base_url, 1)
        time.sleep(1.0)                      # settle: start-up work is not counted
        pids = backends(conn, db.name)
        c0, b0 = sc.cpu(), backend_cpu(pids)
        expected = 0
        with psycopg.connect(db.url, autocommit=True) as writer:
            i = first_id
            while i < first_id + args.changes:
                j = min(i + args.rows, first_id + args.changes) - 1
                writer.execute(WRITE_SQL, [i, j])
                expected += sum(1 for k in range(i, j + 1) if k % 10 + 1 == 1)
                i = j + 1
        deadline = time.time() + 30
        while client is not None and scenario == 'one' and client.events < expected \
                and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        cpu = (sc.cpu() - c0) / args.changes * 1e6
        db_cpu = (backend_cpu(pids) - b0) / args.changes * 1e6
        got = None
        if scenario == 'one':
            got = (client.events, len(set(client.ids)), expected)
        return cpu, db_cpu, got
    finally:
        if client is not None:
            client.close()
        sc.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--changes', type=int, default=20_000)
    p.add_argument('--rows', type=int, default=50, help='rows per statement')
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--baseline', default='main', help="git ref to compare with ('' to skip)")
    p.add_argument('--scenarios', default='none,other,one')
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = p.parse_args()
    scenarios = args.scenarios.split(',')
    if not 1_000 <= args.changes <= 200_000 or not 1 <= args.rows <= 1000 or not 1 <= args.rounds <= 6 \
            or not set(scenarios) <= {'none', 'other', 'one'}:
        p.error('--changes 1000..200000, --rows 1..1000, --rounds 1..6, --scenarios of none,other,one')
    host = psycopg.conninfo.conninfo_to_dict(args.pg).get('host', '127.0.0.1')
    if host not in ('127.0.0.1', 'localhost', '::1') and not host.startswith('/'):
        p.error('--pg must point at this machine (loopback or a Unix socket)')

    workdir = tempfile.mkdtemp(prefix='crm_rt_idle_cost_')
    configs = [('this', ROOT)]
    if args.baseline:
        base = Path(workdir) / 'baseline'
        base.mkdir()
        archive = subprocess.run(['git', '-C', str(ROOT), 'archive', args.baseline, 'sidecar'],
                                 capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(base)], input=archive, check=True)
        rev = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', args.baseline],
                             capture_output=True, text=True, check=True).stdout.strip()
        configs.append((f'base {rev}', base))
    here = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', str(ROOT), 'status', '--porcelain', 'sidecar'],
                           capture_output=True, text=True).stdout.strip()
    print(f'idle_cost: {args.changes:,} changes in {args.rows}-row statements, {args.rounds} rounds '
          f'A B B A; this checkout {here}{" (modified)" if dirty else ""}; '
          f'load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores', flush=True)
    results = {}
    first_id = 1
    try:
        with ScratchDB(args.pg) as db, psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute((ROOT / 'sql/examples/reference_crm.sql').read_text())
            conn.execute((ROOT / 'sql/install.sql').read_text())
            for scenario in scenarios:
                for rnd in range(args.rounds):
                    for name, root in (configs if rnd % 2 == 0 else list(reversed(configs))):
                        cpu, db_cpu, got = run_one(db, conn, root, scenario, args, workdir, first_id)
                        first_id += args.changes
                        results.setdefault((scenario, name), []).append((cpu, db_cpu))
                        check = ''
                        if got is not None:
                            events, distinct, expected = got
                            ok = events == distinct == expected
                            check = f', client got {events}/{expected} ({"exactly once" if ok else "MISMATCH"})'
                        print(f'  {scenario:5} {name:12} round {rnd + 1}: sidecar {cpu:6.1f} µs/change, '
                              f'its PostgreSQL backends {db_cpu:6.1f} µs/change{check}', flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print('\nmedian µs of CPU per journal change (sidecar process / its PostgreSQL backends):')
    for scenario in scenarios:
        line = f'  {scenario:5}'
        for name, _ in configs:
            vals = results[(scenario, name)]
            line += (f'  {name}: {statistics.median(v[0] for v in vals):6.1f} / '
                     f'{statistics.median(v[1] for v in vals):5.1f}')
        print(line)


if __name__ == '__main__':
    main()
