"""What our triggers add to the CRM's own writes: µs per write, with and without them.

    python bench/trigger_cost.py [--writes 20000] [--big 300] [--rounds 2] [--driver pgbench|psycopg]
                                 [--synchronous-commit off|on] [--listen]
                                 [--pg postgresql://postgres@127.0.0.1:5432/postgres]

On a scratch database (sql/examples/reference_crm.sql, created and dropped here) it
times, one client, each write its own autocommit transaction:

  insert            INSERT of one prospect (short text fields)
  update published  UPDATE of `status`, a published column (trigger fires, journal row)
  update internal   UPDATE of `internal_score` only (the trigger's WHEN clause filters it)
  delete            DELETE of one prospect (by primary key)
  insert 100 KB     INSERT of a prospect whose notes are 100 KB of hex text (--big times)

once with sql/install.sql applied and once after sql/uninstall.sql, for --rounds rounds
(alternating, so drift hits both alike), and prints the median µs per write of each and
the difference, as two figures: the client-observed latency per write (what a CRM's
write waits for) and the CPU time of the writing PostgreSQL backend per write (where
the triggers run; much less disturbed by other work on the machine). The driver is
pgbench (-M prepared) when it is installed, else a psycopg loop with prepared
statements.

The writers run with synchronous_commit=off by default: the WAL flush at each commit
is the same work with and without triggers, and on a shared disk it is milliseconds of
noise that hides the triggers' own cost (the extra WAL they write is still written).
--synchronous-commit on measures what a CRM with the default setting sees.

Before each measured phase the table is reset to --writes prospects with known ids
(TRUNCATE, bulk insert, VACUUM ANALYZE) so both configurations start from the same
state. Without --listen nobody LISTENs, as with a sidecar that is down; --listen keeps
one connection LISTENing on crm_realtime and holding the idle listener's advisory
lock (draining notifications, reading nothing), as an idle running sidecar would. Loopback only; bounded; the scratch database is dropped.
Not a test: figures depend on the machine.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent

# Each phase: (name, pgbench script, psycopg statement + parameter maker, count attr).
# Rows have ids md5(i)::uuid for i in 1..N, so updates and deletes hit an existing row
# by primary key; deletes take i from a sequence (an uncorrelated sub-select is run
# once per statement, so the primary key index is still used).
PHASES = [
    ('insert',
     "\\set org random(1, 10)\n"
     "INSERT INTO prospects (organization_id, firstname, lastname, email, phone, status, source, notes)"
     " VALUES (:org, 'Ada', 'Lovelace', 'ada@example.com', '+44 20 7946 0000', 'new', 'web',"
     " 'A short note about this prospect.');\n",
     "INSERT INTO prospects (organization_id, firstname, lastname, email, phone, status, source, notes)"
     " VALUES (%s, 'Ada', 'Lovelace', 'ada@example.com', '+44 20 7946 0000', 'new', 'web',"
     " 'A short note about this prospect.')",
     lambda i, n: ((i % 10) + 1,), 'writes'),
    ('update published',
     "\\set i random(1, {n})\n\\set r random(1, 1000000000)\n"
     "UPDATE prospects SET status = 's' || :r WHERE id = md5(:i::text)::uuid;\n",
     "UPDATE prospects SET status = 's' || %s WHERE id = md5(%s::text)::uuid",
     lambda i, n: (i, (i * 7919) % n + 1), 'writes'),
    ('update internal',
     "\\set i random(1, {n})\n\\set r random(1, 1000000000)\n"
     "UPDATE prospects SET internal_score = :r WHERE id = md5(:i::text)::uuid;\n",
     "UPDATE prospects SET internal_score = %s WHERE id = md5(%s::text)::uuid",
     lambda i, n: (i, (i * 7919) % n + 1), 'writes'),
    ('delete',
     "DELETE FROM prospects WHERE id = (SELECT md5(nextval('bench_delete_seq')::text)::uuid);\n",
     "DELETE FROM prospects WHERE id = md5(%s::text)::uuid",
     lambda i, n: (i + 1,), 'writes'),
    ('insert 100 KB',
     "INSERT INTO prospects (organization_id, firstname, notes)"
     " SELECT 1, 'Big', v FROM bench_blob;\n",
     "INSERT INTO prospects (organization_id, firstname, notes) SELECT 1, 'Big', v FROM bench_blob",
     lambda i, n: (), 'big'),
]

RESET_SQL = """
TRUNCATE prospects CASCADE;
INSERT INTO prospects (id, organization_id, firstname, lastname, email, status, notes)
SELECT md5(i::text)::uuid, (i % 10) + 1, 'First' || i, 'Last' || i, 'p' || i || '@example.com',
       'new', 'A short note about this prospect.'
  FROM generate_series(1, {n}) AS i;
"""


class ScratchDB:
    def __init__(self, admin_url):
        self.admin_url = admin_url
        self.name = f'crm_rt_trig_{uuid.uuid4().hex[:8]}'
        info = psycopg.conninfo.conninfo_to_dict(admin_url)
        self.host = info.get('host', '127.0.0.1')
        self.port = str(info.get('port', 5432))
        self.user = info.get('user', 'postgres')
        self.url = f'postgresql://{self.user}@{self.host}:{self.port}/{self.name}'

    def __enter__(self):
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc):
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def reset(conn, n, triggers):
    """Same starting state for both configurations: n known rows, fresh statistics."""
    conn.execute((ROOT / 'sql/uninstall.sql').read_text())
    conn.execute(RESET_SQL.format(n=int(n)))
    conn.execute('ALTER SEQUENCE bench_delete_seq RESTART WITH 1')
    conn.execute('VACUUM ANALYZE prospects')
    if triggers:
        conn.execute((ROOT / 'sql/install.sql').read_text())
        conn.execute('VACUUM ANALYZE crm_realtime.journal')
    conn.execute('CHECKPOINT')


CLK_TCK = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid):
    """utime + stime of a (backend) process, from /proc/<pid>/stat."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_pgbench(db, script, count, workdir, sync, admin):
    """(client-observed µs per write, backend CPU µs per write).

    pgbench's backend is found in pg_stat_activity by a one-off application_name and
    its CPU sampled every 20 ms until pgbench exits; the last sample misses at most
    20 ms, about 1 µs per write at 20,000 writes.
    """
    appname = f'crm_rt_bench_{uuid.uuid4().hex[:12]}'
    path = Path(workdir) / 'script.sql'
    path.write_text(script)
    proc = subprocess.Popen(
        ['pgbench', '-n', '-M', 'prepared', '-c', '1', '-j', '1', '-t', str(count),
         '-h', db.host, '-p', db.port, '-U', db.user, '-f', str(path), db.name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PGOPTIONS=f'-c synchronous_commit={sync}', PGAPPNAME=appname))
    backend, found, cpu = None, None, float('nan')
    while proc.poll() is None:
        if backend is None:
            # pgbench opens a short first connection before its benchmark one: take the newest
            row = admin.execute('SELECT pid FROM pg_stat_activity WHERE application_name = %s'
                                ' ORDER BY backend_start DESC LIMIT 1', (appname,)).fetchone()
            backend = row[0] if row else None
        if backend is not None:
            try:
                cpu = cpu_seconds(backend)
                found = backend
            except OSError:
                backend = None          # that connection ended: look again
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    m = re.search(r'latency average = ([\d.]+) ms', stdout)
    if proc.returncode != 0 or not m or 'number of failed transactions: 0' not in stdout:
        raise RuntimeError(f'pgbench failed:\n{stdout}\n{stderr}')
    if found is None:
        raise RuntimeError('pgbench finished before its backend could be found; use more --writes')
    return float(m.group(1)) * 1000, cpu / count * 1e6


def run_psycopg(db, sql, params, count, sync):
    """The same with psycopg: one prepared statement per autocommit transaction."""
    with psycopg.connect(db.url, autocommit=True, options=f'-c synchronous_commit={sync}') as conn:
        backend = conn.info.backend_pid
        conn.execute(sql, params(0, count), prepare=True)      # prepare outside the timing
        cpu0, t0 = cpu_seconds(backend), time.perf_counter()
        for i in range(1, count):
            conn.execute(sql, params(i, count), prepare=True)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(backend) - cpu0
        return wall / (count - 1) * 1e6, cpu / (count - 1) * 1e6


class Listening:
    """One connection LISTENing on crm_realtime and draining, as a running sidecar would."""

    def __init__(self, url):
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute('LISTEN crm_realtime')
        # an idle sidecar holds this lock; the triggers notify only while one does
        self.conn.execute('SELECT pg_advisory_lock_shared(1668443506, 1)')
        self.received = 0
        self._stop = False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while not self._stop:
            for _ in self.conn.notifies(timeout=0.2):
                self.received += 1

    def close(self):
        self._stop = True
        self.thread.join(5)
        self.conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--writes', type=int, default=20_000, help='writes per phase (100..200000)')
    p.add_argument('--big', type=int, default=300, help='100 KB inserts per round (10..5000)')
    p.add_argument('--rounds', type=int, default=2, help='with/without rounds (1..5); medians are printed')
    p.add_argument('--driver', choices=['pgbench', 'psycopg'],
                   default='pgbench' if shutil.which('pgbench') else 'psycopg')
    p.add_argument('--synchronous-commit', choices=['off', 'on'], default='off',
                   help="the writers' synchronous_commit (off: leave out the per-commit WAL flush)")
    p.add_argument('--listen', action='store_true', help='keep a LISTEN connection open (a running sidecar)')
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = p.parse_args()
    if not 100 <= args.writes <= 200_000 or not 10 <= args.big <= 5000 or not 1 <= args.rounds <= 5:
        p.error('--writes must be 100..200000, --big 10..5000, --rounds 1..5')
    host = psycopg.conninfo.conninfo_to_dict(args.pg).get('host', '127.0.0.1')
    if host not in ('127.0.0.1', 'localhost', '::1') and not host.startswith('/'):
        p.error('--pg must point at this machine (loopback or a Unix socket)')
    if args.driver == 'pgbench' and not shutil.which('pgbench'):
        p.error('pgbench is not installed (Debian: postgresql-contrib or the postgresql-client package)')

    print(f'driver: {args.driver}, synchronous_commit={args.synchronous_commit}; {args.writes:,} writes'
          f' per phase, {args.big} x 100 KB inserts, {args.rounds} round(s); {"a LISTEN connection open" if args.listen else "nobody LISTENing"}; '
          f'load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores')
    us = {(name, trig): [] for name, *_ in PHASES for trig in (True, False)}
    workdir = tempfile.mkdtemp(prefix='crm_rt_trigger_cost_')
    t_start = time.monotonic()
    try:
        with ScratchDB(args.pg) as db:
            with psycopg.connect(db.url, autocommit=True) as conn:
                conn.execute((ROOT / 'sql/examples/reference_crm.sql').read_text())
                conn.execute('CREATE SEQUENCE bench_delete_seq')
                # 100 KB of hex text: compresses about as badly as real prose, unlike repeat('x')
                conn.execute("CREATE TABLE bench_blob AS SELECT string_agg(md5(i::text || random()::text), '')"
                             " AS v FROM generate_series(1, 3200) AS i")
                for rnd in range(args.rounds):
                    for trig in ((True, False) if rnd % 2 == 0 else (False, True)):
                        reset(conn, args.writes, trig)
                        listener = Listening(db.url) if args.listen else None
                        try:
                            for name, script, sql, params, count_attr in PHASES:
                                count = getattr(args, count_attr)
                                if args.driver == 'pgbench':
                                    v = run_pgbench(db, script.format(n=args.writes), count, workdir,
                                                    args.synchronous_commit, conn)
                                else:
                                    v = run_psycopg(db, sql, params, count, args.synchronous_commit)
                                us[(name, trig)].append(v)
                        finally:
                            if listener is not None:
                                listener.close()
                        journal = conn.execute("SELECT to_regclass('crm_realtime.journal') IS NOT NULL"
                                               ).fetchone()[0] and conn.execute(
                            'SELECT count(*) FROM crm_realtime.journal').fetchone()[0]
                        print(f"  round {rnd + 1}, triggers {'on ' if trig else 'off'}: "
                              + ', '.join(f'{name} {us[(name, trig)][-1][0]:.0f}/{us[(name, trig)][-1][1]:.0f}'
                                          for name, *_ in PHASES)
                              + f' µs (latency/backend CPU); journal rows {journal or 0:,}')
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f'\nµs per write, median of {args.rounds} round(s) ({time.monotonic() - t_start:.0f} s in all):')
    print(f"  {'':18} {'client-observed latency':^37}   {'backend CPU':^37}")
    print(f"  {'write':18}" + f" {'without':>9} {'with':>9} {'added':>9} {'added %':>7}  " * 2)
    for name, *_ in PHASES:
        line = f'  {name:18}'
        for k in (0, 1):
            off = statistics.median(v[k] for v in us[(name, False)])
            on = statistics.median(v[k] for v in us[(name, True)])
            pct = 100 * (on - off) / off if off else float('nan')
            line += f' {off:9.1f} {on:9.1f} {on - off:9.1f} {pct:6.0f}%  '
        print(line.rstrip())

if __name__ == '__main__':
    main()
