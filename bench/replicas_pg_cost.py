"""What sidecar replicas cost PostgreSQL: journal reads and CPU with 1, 3 and 10 replicas.

    python bench/replicas_pg_cost.py [--replicas 1,3,10] [--listeners 0,10,40,80]
                                     [--rate 50] [--seconds 15] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Part 1, replicas: N ``crm-realtime serve`` processes (no clients) LISTEN on one
scratch database (reference CRM + sql/install.sql, dropped at the end) while a
writer INSERTs prospects, each its own transaction, at --rate per second for
--seconds. Printed per N:
  * journal reads per second and per write: scans of crm_realtime.journal
    (pg_stat_user_tables, read after the backends' statistics are flushed);
  * CPU of the replicas' PostgreSQL backends (LISTEN + pool), in ms per write
    and in % of a core, from /proc/<pid>/stat;
  * CPU of the writing backend per write (where NOTIFY signals the listeners),
    and the writer's commit latency p50/p99;
  * CPU of the replica processes themselves, % of a core.
Part 2, bare listeners: K plain LISTEN connections on the sidecar's channel
that only drain their notifications (no journal reads), the same writes: the
cost of one NOTIFY per commit as the number of listening backends grows, i.e.
where LISTEN/NOTIFY stops scaling. K is bounded by max_connections.

Everything runs on this machine (2 cores shared with the writer and
PostgreSQL), talks only to 127.0.0.1, stops by itself. Not a test: figures
depend on the machine.
"""
import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import (ScratchDB, backends_cpu, cpu_seconds, free_port, percentile,  # noqa: E402
                    start_server, stop)

JOURNAL_SCANS = """SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_catalog.pg_stat_user_tables
                    WHERE schemaname = 'crm_realtime' AND relname = 'journal'"""
STATS_FLUSH_WAIT = 11.5     # an idle backend flushes its statistics within 10 s (PostgreSQL 15+)


class Writer(threading.Thread):
    def __init__(self, url, rate, seconds):
        super().__init__(daemon=True)
        self.url, self.rate, self.seconds = url, rate, seconds
        self.latencies = []
        self.pid = None
        self.conn = psycopg.connect(url, autocommit=True, application_name='bench writer')
        self.pid = self.conn.execute('SELECT pg_backend_pid()').fetchone()[0]

    def run(self):
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < self.seconds:
            t = time.monotonic()
            self.conn.execute('INSERT INTO prospects (organization_id, firstname) VALUES (%s, %s)',
                              (1 + n % 10, f'w{n}'))
            self.latencies.append((time.monotonic() - t) * 1000)
            n += 1
            time.sleep(max(0.0, start + n / self.rate - time.monotonic()))
        self.cpu_end = cpu_seconds(self.pid)     # before its backend goes away
        self.conn.close()


def measure(db, monitor, rate, seconds, exclude, extra_pids=()):
    """Run the writer; return figures for the backends not in ``exclude`` and the writer."""
    readers = [r[0] for r in monitor.execute(
        'SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> ALL(%s)',
        (db.name, list(exclude))).fetchall()]
    writer = Writer(db.url, rate, seconds)
    scans0 = monitor.execute(JOURNAL_SCANS).fetchone()[0]
    cpu0, wcpu0 = backends_cpu(readers), cpu_seconds(writer.pid)
    pcpu0 = sum(cpu_seconds(p) for p in extra_pids)
    t0 = time.monotonic()
    writer.start()
    writer.join()
    elapsed = time.monotonic() - t0
    wcpu = writer.cpu_end
    cpu1 = backends_cpu(readers)
    pcpu1 = sum(cpu_seconds(p) for p in extra_pids)
    time.sleep(STATS_FLUSH_WAIT)
    monitor.execute('SELECT pg_catalog.pg_stat_clear_snapshot()')
    scans1 = monitor.execute(JOURNAL_SCANS).fetchone()[0]
    writes = len(writer.latencies)
    lat = sorted(writer.latencies)
    return {
        'writes': writes, 'seconds': elapsed, 'readers': len(readers),
        'reads_per_s': (scans1 - scans0) / elapsed, 'reads_per_write': (scans1 - scans0) / writes,
        'reader_ms_per_write': (cpu1 - cpu0) * 1000 / writes, 'reader_core_pct': (cpu1 - cpu0) / elapsed * 100,
        'writer_ms_per_write': (wcpu - wcpu0) * 1000 / writes,
        'commit_p50': percentile(lat, 50), 'commit_p99': percentile(lat, 99),
        'process_core_pct': (pcpu1 - pcpu0) / elapsed * 100,
    }


def run_replicas(args, n):
    with ScratchDB(args.pg) as db, psycopg.connect(db.url, autocommit=True) as monitor:
        mine = {monitor.execute('SELECT pg_backend_pid()').fetchone()[0]}
        procs = []
        logs = tempfile.mkdtemp(prefix='crm-rt-bench-replicas-')
        try:
            for i in range(n):
                procs.append(start_server('sidecar', db.url, free_port(), f'{logs}/replica-{i}.log'))
            time.sleep(1.0)
            r = measure(db, monitor, args.rate, args.seconds, mine, [p.pid for p in procs])
        finally:
            for p in procs:
                stop(p)
    return r


async def _listen(url, count, ready, done):
    conns = []
    for _ in range(count):
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, application_name='bench listener')
        await conn.execute('LISTEN "crm_realtime"')
        conns.append(conn)

    async def drain(conn):
        async for _ in conn.notifies():
            if done.is_set():
                break

    tasks = [asyncio.ensure_future(drain(c)) for c in conns]
    ready.set()
    while not done.is_set():
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        await c.close()


def free_connections(monitor) -> int:
    return monitor.execute(
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend')").fetchone()[0]


def run_listeners(args, k):
    with ScratchDB(args.pg) as db, psycopg.connect(db.url, autocommit=True) as monitor:
        mine = {monitor.execute('SELECT pg_backend_pid()').fetchone()[0]}
        room = free_connections(monitor) - 5          # the writer, and others' work on this server
        if k > room:
            print(f'{k:14d} | skipped: PostgreSQL has room for {room} more connections (max_connections)')
            return None
        ready, done = threading.Event(), threading.Event()
        failed = []

        def listen():
            try:
                asyncio.run(_listen(db.url, k, ready, done))
            except Exception as exc:  # noqa: BLE001 - reported below
                failed.append(exc)
                ready.set()

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        ready.wait(60)
        if failed:
            sys.exit(f'bench/replicas_pg_cost.py: {k} listeners could not connect: {failed[0]}')
        try:
            r = measure(db, monitor, args.rate, args.seconds, mine)
        finally:
            done.set()
            thread.join(30)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--replicas', default='1,3,10')
    ap.add_argument('--listeners', default='0,10,40,80')
    ap.add_argument('--rate', type=float, default=50)
    ap.add_argument('--seconds', type=float, default=15)
    ap.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = ap.parse_args()
    print(f'{args.rate:g} writes/s for {args.seconds:g} s per run; load average {os.getloadavg()[0]:.2f}')

    print('\nreplicas | journal reads/s | reads/write | their PG backends: ms CPU/write, % core '
          '| writer backend ms CPU/write | commit p50/p99 ms | replica processes % core')
    for n in [int(x) for x in args.replicas.split(',') if x]:
        r = run_replicas(args, n)
        print(f"{n:8d} | {r['reads_per_s']:15.1f} | {r['reads_per_write']:11.2f} | "
              f"{r['reader_ms_per_write']:8.3f} ms, {r['reader_core_pct']:5.1f}% ({r['readers']} backends) | "
              f"{r['writer_ms_per_write']:8.3f} | {r['commit_p50']:.2f}/{r['commit_p99']:.2f} | "
              f"{r['process_core_pct']:5.1f}%", flush=True)

    print('\nbare listeners | their backends: ms CPU/write, % core | writer backend ms CPU/write | commit p50/p99 ms')
    for k in [int(x) for x in args.listeners.split(',') if x]:
        r = run_listeners(args, k)
        if r is None:
            continue
        print(f"{k:14d} | {r['reader_ms_per_write']:8.3f} ms, {r['reader_core_pct']:5.1f}% | "
              f"{r['writer_ms_per_write']:8.3f} | {r['commit_p50']:.2f}/{r['commit_p99']:.2f}", flush=True)


if __name__ == '__main__':
    main()
