"""What the CRM's write throughput loses to us, tried as a DBA would: pgbench, A B B A.

    python bench/host_cost.py [--seconds 8] [--writers 1,4,16] [--baseline REF] [--bulk 10000]
                              [--bulk-runs 3]
                              [--pg postgresql://postgres@127.0.0.1:5432/postgres]

On a scratch database (sql/examples/reference_crm.sql; created and dropped here),
pgbench runs the DBA's scenario: each transaction INSERTs a prospect with 400 bytes
of notes and UPDATEs its status, at each --writers count of concurrent clients, in
these configurations:

  off          no triggers (sql/uninstall.sql applied)
  sql          sql/install.sql of this checkout, nobody listening (a sidecar that is down)
  sql+sidecar  the same with `crm-realtime serve` of this checkout running, no client connected
  lean ...     the same two with lean capture (crm_realtime.lean('prospects'): keys in the
               journal, payloads built when the sidecar reads)
  base ...     the same two with install.sql and the sidecar of git ref --baseline
               (default main), so "before" and "after" come from one run

Each configuration runs twice per writer count, in A B B A order (the second pass
reversed), so drift on a shared machine hits every configuration alike; the median
of the two is printed with its ratio to "off". With a sidecar running, its CPU time
per journal change is printed too (utime+stime of the process from /proc over the
run, divided by the journal rows written).

Then one statement that writes --bulk prospects (a CSV import, INSERT ... SELECT)
is timed in each configuration (median of --bulk-runs, alternated) against "off":
wall time, and the CPU time of the backend that ran it (/proc/<pid>/schedstat);
"cold" as the first write of a session after install.sql, "warm" after the same
session wrote a 1-row and a 100-row INSERT (a CRM's pooled connection).
``--writers ''`` skips pgbench (the import only).

Uses the server's own synchronous_commit (the default, on: what a CRM sees). Loopback
only, bounded (about 2 x configurations x writer counts x --seconds), and the
scratch database is dropped. Not a test: figures depend on the machine.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))
from trigger_cost import ScratchDB, cpu_seconds  # noqa: E402

SCRIPT = """\\set org random(1, 10)
BEGIN;
INSERT INTO prospects (organization_id, firstname, lastname, email, phone, status, source, notes)
  VALUES (:org, 'Ada', 'Lovelace', 'ada@example.com', '+44 20 7946 0000', 'new', 'web',
          repeat('n', 400)) RETURNING id \\gset
UPDATE prospects SET status = 'contacted' WHERE id = :id;
END;
"""

BULK_SQL = ("INSERT INTO prospects (organization_id, firstname, lastname, email, status, notes) "
            "SELECT mod(i, 10) + 1, 'Imp' || i, 'Ort', 'imp' || i || '@example.com', 'new', repeat('n', 400) "
            "FROM generate_series(1, %s) AS i")


class Sidecar:
    """`crm-realtime serve` from ``root`` (this checkout or the baseline), on loopback."""

    def __init__(self, root, db_url, logdir):
        import socket
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith('SIDECAR_')}
        env.update(SIDECAR_DATABASE_URL=db_url, SIDECAR_HOST='127.0.0.1', SIDECAR_PORT=str(port),
                   SIDECAR_JWT_SECRET='bench-secret-' + 'x' * 40, SIDECAR_LOG_LEVEL='WARNING',
                   PYTHONPATH=str(root))
        self.log = open(Path(logdir) / f'sidecar-{port}.log', 'wb')
        self.proc = subprocess.Popen([sys.executable, '-m', 'sidecar', 'serve'], cwd=str(root),
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f'http://127.0.0.1:{port}/readyz'
        import urllib.request
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f'sidecar from {root} did not become ready; log in {self.log.name}')

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def backend_cpu(pid):
    """CPU seconds a local backend has run (schedstat: nanoseconds, unlike stat's 10 ms ticks)."""
    with open(f'/proc/{pid}/schedstat') as f:
        return int(f.read().split()[0]) / 1e9


def journal_rows(conn):
    if conn.execute("SELECT to_regclass('crm_realtime.journal')").fetchone()[0] is None:
        return 0
    return conn.execute('SELECT count(*) FROM crm_realtime.journal').fetchone()[0]


def prepare(conn, install, name=''):
    """Same start for every run: no rows, the configuration's triggers (or none)."""
    conn.execute((ROOT / 'sql/uninstall.sql').read_text())
    conn.execute('TRUNCATE prospects CASCADE')
    if install is not None:
        conn.execute(install.read_text())
        if name.startswith('lean'):
            conn.execute("SELECT crm_realtime.lean('prospects')")
    conn.execute('VACUUM ANALYZE prospects')
    conn.execute('CHECKPOINT')


def pgbench(db, writers, seconds, workdir):
    path = Path(workdir) / 'scenario.sql'
    path.write_text(SCRIPT)
    jobs = min(writers, os.cpu_count() or 1)
    for attempt in range(5):
        out = subprocess.run(
            ['pgbench', '-n', '-M', 'prepared', '-c', str(writers), '-j', str(jobs), '-T', str(seconds),
             '-h', db.host, '-p', db.port, '-U', db.user, '-f', str(path), db.name],
            capture_output=True, text=True, timeout=seconds + 120)
        if 'too many clients already' not in out.stderr:
            break
        time.sleep(3)           # a shared server: wait for connections to free up
    m = re.search(r'tps = ([\d.]+) \(without initial connection time\)', out.stdout)
    failed = re.search(r'number of failed transactions: (\d+)', out.stdout)
    if out.returncode != 0 or not m or (failed and failed.group(1) != '0'):
        raise RuntimeError(f'pgbench failed:\n{out.stdout}\n{out.stderr}')
    return float(m.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=int, default=8, help='seconds per pgbench run (3..60)')
    p.add_argument('--writers', default='1,4,16', help='comma-separated client counts (1..64)')
    p.add_argument('--baseline', default='main', help="git ref to compare with ('' to skip)")
    p.add_argument('--bulk', type=int, default=10_000, help='rows of the one-statement import (0 to skip)')
    p.add_argument('--bulk-runs', type=int, default=3, help='imports per configuration (1..30)')
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = p.parse_args()
    writers = [int(w) for w in args.writers.split(',') if w.strip()]
    if not 3 <= args.seconds <= 60 or not all(1 <= w <= 64 for w in writers) or not 0 <= args.bulk <= 100_000 \
            or not 1 <= args.bulk_runs <= 30:
        p.error('--seconds must be 3..60, --writers 1..64 each, --bulk 0..100000, --bulk-runs 1..30')
    host = psycopg.conninfo.conninfo_to_dict(args.pg).get('host', '127.0.0.1')
    if host not in ('127.0.0.1', 'localhost', '::1') and not host.startswith('/'):
        p.error('--pg must point at this machine (loopback or a Unix socket)')
    if not shutil.which('pgbench'):
        p.error('pgbench is not installed (Debian: postgresql-client or postgresql-contrib)')

    workdir = tempfile.mkdtemp(prefix='crm_rt_host_cost_')
    configs = [('off', None, None), ('sql', ROOT / 'sql/install.sql', None),
               ('sql+sidecar', ROOT / 'sql/install.sql', ROOT),
               ('lean', ROOT / 'sql/install.sql', None), ('lean+sidecar', ROOT / 'sql/install.sql', ROOT)]
    if args.baseline:
        base = Path(workdir) / 'baseline'
        base.mkdir()
        archive = subprocess.run(['git', '-C', str(ROOT), 'archive', args.baseline, 'sql', 'sidecar'],
                                 capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', str(base)], input=archive, check=True)
        rev = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', args.baseline],
                             capture_output=True, text=True, check=True).stdout.strip()
        configs += [(f'base sql', base / 'sql/install.sql', None),
                    (f'base sql+sidecar', base / 'sql/install.sql', base)]
    here = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
    print(f'host_cost: {args.seconds} s per run, writers {writers}, A B B A; this checkout {here}'
          + (f', baseline {args.baseline} ({rev})' if args.baseline else '')
          + f'; load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores', flush=True)

    tps = {}                 # (config, writers) -> [tps, ...]
    cpu = {}                 # (config, writers) -> [µs per change, ...]
    bulk = {}                # config -> [seconds, ...]
    bulk_cpu = {}            # config -> [backend CPU seconds, ...]
    t0 = time.monotonic()
    try:
        with ScratchDB(args.pg) as db, psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute((ROOT / 'sql/examples/reference_crm.sql').read_text())
            for n in writers:
                for rnd in range(2):
                    order = configs if rnd == 0 else list(reversed(configs))
                    for name, install, sidecar_root in order:
                        prepare(conn, install, name)
                        sc = Sidecar(sidecar_root, db.url, workdir) if sidecar_root else None
                        try:
                            c0 = sc.cpu() if sc else 0
                            v = pgbench(db, n, args.seconds, workdir)
                            if sc:
                                time.sleep(0.5)          # let it read the last batch
                                rows = journal_rows(conn)
                                cpu.setdefault((name, n), []).append((sc.cpu() - c0) / max(rows, 1) * 1e6)
                        finally:
                            if sc:
                                sc.stop()
                        tps.setdefault((name, n), []).append(v)
                        print(f'  {n:2} writers, pass {rnd + 1}, {name:17} {v:8.0f} tps'
                              + (f', sidecar {cpu[(name, n)][-1]:.1f} µs CPU/change' if sc else ''),
                              flush=True)
            if args.bulk:
                backend = conn.execute('SELECT pg_backend_pid()').fetchone()[0]
                for rnd in range(args.bulk_runs):
                    for name, install, sidecar_root in (configs if rnd % 2 == 0 else list(reversed(configs))):
                        if sidecar_root:
                            continue       # the statement's own cost: the sidecar does not change it
                        for warm in (False, True):
                            prepare(conn, install, name)
                            if warm:
                                conn.execute(BULK_SQL, [1])
                                conn.execute(BULK_SQL, [100])
                            key = f'{name} ({"warm" if warm else "cold"})'
                            c0 = backend_cpu(backend)
                            started = time.perf_counter()
                            conn.execute(BULK_SQL, [args.bulk])
                            bulk.setdefault(key, []).append(time.perf_counter() - started)
                            bulk_cpu.setdefault(key, []).append(backend_cpu(backend) - c0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    configs_done = configs if writers else []
    if writers:
        print(f'\nCRM transactions/s, median of 2 ({time.monotonic() - t0:.0f} s in all); ratio = without / with')
        print(f"  {'configuration':17}" + ''.join(f' {f"{n} writer" + ("s" if n > 1 else ""):>20}' for n in writers))
    for name, *_ in configs_done:
        line = f'  {name:17}'
        for n in writers:
            off = statistics.median(tps[('off', n)])
            v = statistics.median(tps[(name, n)])
            line += f' {v:8.0f} ({off / v:4.2f}x)    '
        print(line.rstrip())
    for name, *_ in configs:
        if any((name, n) in cpu for n in writers):
            print(f'  sidecar CPU per change, {name}: '
                  + ', '.join(f'{statistics.median(cpu[(name, n)]):.1f} µs at {n}' for n in writers))
    if bulk:
        offs = {k: (statistics.median(bulk[k]), statistics.median(bulk_cpu[k]))
                for k in bulk if k.startswith('off ')}
        print(f'\none INSERT ... SELECT of {args.bulk:,} prospects, median of {args.bulk_runs}: '
              f'wall time, and the backend\'s CPU time')
        for name in sorted(bulk, key=lambda k: (k.endswith('(warm)'), k)):
            off, off_cpu = offs['off ' + name.rsplit(' ', 1)[1]]
            v = statistics.median(bulk[name])
            c = statistics.median(bulk_cpu[name])
            print(f'  {name:24} {v * 1000:8.0f} ms ({v / off:4.2f}x)   CPU {c * 1000:6.0f} ms ({c / off_cpu:4.2f}x)'
                  f'   [{" ".join(f"{x * 1000:.0f}" for x in bulk[name])}]')


if __name__ == '__main__':
    main()
