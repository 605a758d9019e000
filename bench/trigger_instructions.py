"""What our triggers cost each CRM transaction, in CPU instructions: a figure that does not move.

    python bench/trigger_instructions.py [--baseline REF] [--transactions 50,250] [--split]
                                         [--bulk 10000]

On a shared machine transactions/s and even CPU seconds move by 2x between runs of
the same code (bench/host_cost.py, bench/writer_cpu.py), which hides a 5% change.
This counts instructions instead: a scratch PostgreSQL cluster (initdb in a
temporary directory, the server's own binaries), sql/examples/reference_crm.sql,
then `postgres --single` under valgrind's callgrind runs host_cost.py's scenario
(each transaction INSERTs a prospect with 400 bytes of notes and UPDATEs its
status, as prepared statements), on a table that holds 2,000 rows already (so
that plans are those of a real table: on an empty one the UPDATE's plan is a
sequential scan, which makes the CRM's own cost grow with every row). Run for two transaction counts; the difference,
divided by the difference in transactions, is the cost of one transaction with
the start-up and the first calls (plan caching, PL/pgSQL compilation) taken out.
The same count, run twice, gives the same figure to within a few hundred.

Configurations: no triggers (sql/uninstall.sql state), this checkout's
sql/install.sql, the same with lean capture (crm_realtime.lean('prospects')), and --baseline's (a git ref; '' to skip). --split also measures
this checkout with only the INSERT trigger and with only the UPDATE trigger.
--bulk N counts one INSERT ... SELECT of N prospects (host_cost.py's CSV import)
the same way: a run with it minus a run without, after the same first writes.

What it does not count: the kernel (the socket a real client talks through,
the WAL fsync), waits for locks, and cache misses; so a ratio here is larger
than the transactions/s ratio host_cost.py shows, where the CRM's own costs
include those. It measures the work our SQL adds, which is what a change of it
changes. Needs valgrind and the PostgreSQL server binaries (Debian:
postgresql-15); run as root, the cluster belongs to user postgres. Everything
is local (a Unix socket in the temporary directory), and removed at the end.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PREPARE = (
    "PREPARE ins(uuid, int) AS INSERT INTO prospects (id, organization_id, firstname, lastname, email, "
    "phone, status, source, notes) VALUES ($1, $2, 'Ada', 'Lovelace', 'ada@example.com', "
    "'+44 20 7946 0000', 'new', 'web', repeat('n', 400));\n"
    "PREPARE upd(uuid) AS UPDATE prospects SET status = 'contacted' WHERE id = $1;\n")

BULK_SQL = ("INSERT INTO prospects (organization_id, firstname, lastname, email, status, notes) "
            "SELECT mod(i, 10) + 1, 'Imp' || i, 'Ort', 'imp' || i || '@example.com', 'new', repeat('n', 400) "
            "FROM generate_series(1, {n}) AS i;\n")

PREFILL_SQL = ("INSERT INTO prospects (organization_id, firstname, lastname, email, status, notes) "
               "SELECT mod(i, 10) + 1, 'Old' || i, 'Row', 'old' || i || '@example.com', 'won', repeat('o', 400) "
               "FROM generate_series(1, 2000) AS i")

LEAN = "SELECT crm_realtime.lean('prospects');"

ONLY = {
    'insert': 'DROP TRIGGER crm_realtime_capture_update ON prospects;',
    'update': 'DROP TRIGGER crm_realtime_capture ON prospects;',
}


def bindir():
    try:
        out = subprocess.run(['pg_config', '--bindir'], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / 'postgres').exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(Path('/usr/lib/postgresql').glob('*/bin/postgres'))
    if not found:
        sys.exit('trigger_instructions: no PostgreSQL server binaries (postgres, initdb) found')
    return found[-1].parent


class Cluster:
    def __init__(self, workdir):
        self.bin = bindir()
        self.dir = Path(workdir)
        self.data = self.dir / 'data'
        self.as_user = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            self.port = s.getsockname()[1]
        if self.as_user:
            shutil.chown(self.dir, 'postgres')
        self._run([self.bin / 'initdb', '-D', self.data, '-A', 'trust', '-U', 'postgres'], quiet=True)
        with open(self.data / 'postgresql.conf', 'a') as f:
            f.write(f"listen_addresses = ''\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                    "fsync = off\n")

    def _run(self, cmd, quiet=False, **kw):
        cmd = self.as_user + [str(c) for c in cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, **kw)
        if out.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}')
        return out

    def start(self):
        self._run([self.bin / 'pg_ctl', '-D', self.data, '-l', self.dir / 'server.log', '-w', 'start'])

    def stop(self):
        self._run([self.bin / 'pg_ctl', '-D', self.data, '-w', '-m', 'fast', 'stop'])

    def psql(self, db, *files_or_sql):
        for item in files_or_sql:
            arg = ['-f', item] if isinstance(item, Path) else ['-c', item]
            self._run(['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', self.dir, '-p', self.port,
                       '-U', 'postgres', '-d', db] + arg)

    def prepare(self, install, extra):
        self.start()
        try:
            self.psql('postgres', 'DROP DATABASE IF EXISTS crm', 'CREATE DATABASE crm')
            self.psql('crm', ROOT / 'sql/examples/reference_crm.sql')
            # rows already there, as in a CRM, so that the statistics (and so the
            # plans, e.g. the UPDATE's index scan) are those of a real table
            self.psql('crm', PREFILL_SQL)
            if install is not None:
                self.psql('crm', install)
            if extra:
                self.psql('crm', extra)
            self.psql('crm', 'VACUUM ANALYZE')
        finally:
            self.stop()

    def count(self, transactions, bulk=0):
        """Instructions of one `postgres --single` run of the scenario (then the import)."""
        script = self.dir / 'script.sql'
        lines = [PREPARE]
        for i in range(transactions):
            u = uuid.UUID(int=i + 1)
            lines.append(f"BEGIN;\nEXECUTE ins('{u}', {1 + i % 10});\nEXECUTE upd('{u}');\nCOMMIT;\n")
        if bulk:
            lines.append(BULK_SQL.format(n=int(bulk)))
        script.write_text(''.join(lines))
        if self.as_user:
            shutil.chown(script, 'postgres')
        out_file = self.dir / 'callgrind.out'
        with open(script) as stdin:
            res = self._run(['valgrind', '--tool=callgrind', f'--callgrind-out-file={out_file}',
                             self.bin / 'postgres', '--single', '-D', self.data, '-c', 'fsync=off', 'crm'],
                            stdin=stdin)
        if 'ERROR' in res.stdout:
            raise RuntimeError('the scenario failed:\n' + '\n'.join(
                line for line in res.stdout.splitlines() if 'ERROR' in line)[:2000])
        m = re.search(r'Collected : (\d+)', res.stderr)
        if not m:
            raise RuntimeError('no instruction count from callgrind:\n' + res.stderr[-2000:])
        return int(m.group(1))


def per_transaction(cluster, install, extra, n1, n2):
    counts = []
    for n in (n1, n2):
        cluster.prepare(install, extra)   # same starting state for both counts
        counts.append(cluster.count(n))
    return (counts[1] - counts[0]) / (n2 - n1)


def import_cost(cluster, install, n, extra=None):
    counts = []
    for bulk in (0, n):
        cluster.prepare(install, extra)
        counts.append(cluster.count(20, bulk))
    return counts[1] - counts[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--baseline', default='main', help="git ref to compare with ('' to skip)")
    p.add_argument('--transactions', default='50,250', help='the two transaction counts, N1,N2')
    p.add_argument('--split', action='store_true', help='also the INSERT and the UPDATE trigger alone')
    p.add_argument('--bulk', type=int, default=0, help='also one INSERT ... SELECT of this many rows (0: no)')
    args = p.parse_args()
    try:
        n1, n2 = (int(x) for x in args.transactions.split(','))
    except ValueError:
        p.error('--transactions N1,N2 (two integers)')
    if not (1 <= n1 < n2 <= 5000):
        p.error('--transactions: 1 <= N1 < N2 <= 5000')
    if not 0 <= args.bulk <= 100_000:
        p.error('--bulk 0..100000')
    if not shutil.which('valgrind'):
        p.error('valgrind is not installed (Debian: valgrind)')
    workdir = tempfile.mkdtemp(prefix='crm_rt_instr_')
    os.chmod(workdir, 0o755)    # the cluster's user must reach its directory
    try:
        configs = [('no triggers', None, None), ('install.sql', ROOT / 'sql/install.sql', None)]
        if args.baseline:
            base = Path(workdir) / 'base'
            base.mkdir()
            archive = subprocess.run(['git', '-C', str(ROOT), 'archive', args.baseline, 'sql'],
                                     capture_output=True, check=True).stdout
            subprocess.run(['tar', '-x', '-C', str(base)], input=archive, check=True)
            configs.append((f'install.sql of {args.baseline}', base / 'sql/install.sql', None))
        # lean capture (crm_realtime.lean()): keys in the journal, payloads built when read
        configs.append(('install.sql, lean', ROOT / 'sql/install.sql', LEAN))
        if args.split:
            configs += [('install.sql, INSERT trigger only', ROOT / 'sql/install.sql', ONLY['insert']),
                        ('install.sql, UPDATE trigger only', ROOT / 'sql/install.sql', ONLY['update'])]
        here = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'],
                              capture_output=True, text=True).stdout.strip()
        cluster_dir = Path(workdir) / 'cluster'
        cluster_dir.mkdir()
        cluster = Cluster(cluster_dir)
        print(f'trigger_instructions: PostgreSQL {cluster.bin}, transactions {n1} and {n2}; this checkout '
              f'{here}' + (f', baseline {args.baseline}' if args.baseline else ''), flush=True)
        off = None
        for name, install, extra in configs:
            v = per_transaction(cluster, install, extra, n1, n2)
            off = v if off is None else off
            extra_txt = '' if install is None else f'   +{v - off:,.0f} ({v / off:.2f}x)'
            print(f'  {name:36} {v:12,.0f} instructions per INSERT + UPDATE transaction{extra_txt}', flush=True)
        if args.bulk:
            off = None
            for name, install, extra in configs:
                if extra is not None and extra != LEAN:
                    continue
                v = import_cost(cluster, install, args.bulk, extra)
                off = v if off is None else off
                extra_txt = '' if install is None else f'   ({v / off:.2f}x)'
                print(f'  {name:36} {v:14,.0f} instructions for one INSERT ... SELECT of {args.bulk:,} '
                      f'prospects{extra_txt}', flush=True)
    finally:
        subprocess.run(['rm', '-rf', workdir])


if __name__ == '__main__':
    main()
