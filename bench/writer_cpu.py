"""The CPU time our triggers add to each CRM transaction, this checkout against another ref.

    python bench/writer_cpu.py [--writers 16] [--transactions 1500] [--rounds 3] [--baseline main]
                               [--pg postgresql://postgres@127.0.0.1:5432/postgres]

host_cost.py's scenario (each transaction INSERTs a prospect with 400 bytes of notes and
UPDATEs its status), run by --writers threads, each with its own connection and prepared
statements, --transactions each. What is measured is the CPU time of the writing backends
(/proc/<pid>/schedstat, summed over them, per transaction): on a shared 2-core machine
transactions/s move by 2x between runs, the backends' CPU time much less. Configurations
"off" (no triggers), "sql" (this checkout's install.sql) and "base sql" (--baseline's),
interleaved in A B C C B A order over --rounds rounds; medians printed. Nobody listens
(a sidecar that is down or dormant). Loopback only; the scratch database is dropped.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))
from trigger_cost import ScratchDB  # noqa: E402

INSERT = ("INSERT INTO prospects (organization_id, firstname, lastname, email, phone, status, source, notes) "
          "VALUES (%s, 'Ada', 'Lovelace', 'ada@example.com', '+44 20 7946 0000', 'new', 'web', "
          "repeat('n', 400)) RETURNING id")
UPDATE = "UPDATE prospects SET status = 'contacted' WHERE id = %s"


def backend_cpu(pid):
    with open(f'/proc/{pid}/schedstat') as f:
        return int(f.read().split()[0]) / 1e9


def run(url, writers, transactions):
    conns = [psycopg.connect(url, autocommit=False, prepare_threshold=0) for _ in range(writers)]
    pids = [c.execute('SELECT pg_backend_pid()').fetchone()[0] for c in conns]
    for c in conns:
        c.commit()
    start = threading.Barrier(writers + 1)
    errors = []

    def work(i, conn):
        start.wait()
        try:
            for n in range(transactions):
                (pk,) = conn.execute(INSERT, [1 + (i + n) % 10]).fetchone()
                conn.execute(UPDATE, [pk])
                conn.commit()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    c0 = sum(backend_cpu(p) for p in pids)
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = sum(backend_cpu(p) for p in pids) - c0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    total = writers * transactions
    return cpu / total * 1e6, total / wall


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--writers', type=int, default=16)
    p.add_argument('--transactions', type=int, default=1500, help='per writer')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--baseline', default='main', help="git ref to compare with ('' to skip)")
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = p.parse_args()
    if not (1 <= args.writers <= 64 and 10 <= args.transactions <= 20_000 and 1 <= args.rounds <= 9):
        p.error('--writers 1..64, --transactions 10..20000, --rounds 1..9')
    configs = [('off', None), ('sql', ROOT / 'sql/install.sql')]
    workdir = tempfile.mkdtemp(prefix='crm_rt_writer_cpu_')
    if args.baseline:
        archive = subprocess.run(['git', '-C', str(ROOT), 'archive', args.baseline, 'sql'],
                                 capture_output=True, check=True).stdout
        subprocess.run(['tar', '-x', '-C', workdir], input=archive, check=True)
        configs.append(('base sql', Path(workdir) / 'sql/install.sql'))
    here = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True).stdout.strip()
    print(f'writer_cpu: {args.writers} writers x {args.transactions} transactions, {args.rounds} rounds; '
          f'this checkout {here}' + (f', baseline {args.baseline}' if args.baseline else '')
          + f'; load {os.getloadavg()[0]:.2f}', flush=True)
    res = {}
    with ScratchDB(args.pg) as db, psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute((ROOT / 'sql/examples/reference_crm.sql').read_text())
        for rnd in range(args.rounds):
            for name, install in (configs if rnd % 2 == 0 else list(reversed(configs))):
                conn.execute((ROOT / 'sql/uninstall.sql').read_text())
                conn.execute('TRUNCATE prospects CASCADE')
                if install is not None:
                    conn.execute(install.read_text())
                conn.execute('VACUUM ANALYZE prospects')
                conn.execute('CHECKPOINT')
                us, tps = run(db.url, args.writers, args.transactions)
                res.setdefault(name, []).append((us, tps))
                print(f'  round {rnd + 1} {name:9} {us:6.0f} µs backend CPU/transaction, {tps:6.0f} tx/s', flush=True)
    off = statistics.median(u for u, _ in res['off'])
    print('\nmedians:')
    for name, _ in configs:
        us = statistics.median(u for u, _ in res[name])
        tps = statistics.median(t for _, t in res[name])
        print(f'  {name:9} {us:6.0f} µs/transaction (+{us - off:.0f}), {tps:6.0f} tx/s')


if __name__ == '__main__':
    main()
