"""What capture by logical decoding would cost the CRM's writes, beside our triggers'.

    python bench/decoding_cost.py [--seconds 5] [--writers 1,4,16]

Not a capture mode of this product: a measurement of the road issue 10's goal
(at most 1.15x slower at 4 and 16 writers) would need, taken before building it.
The triggers do their work inside every CRM transaction; logical decoding does it
after the commit, in a WAL sender, outside the CRM's transactions.

A scratch PostgreSQL cluster (initdb in a temporary directory, the server's own
binaries, wal_level = logical, fsync on, a Unix socket only) runs
bench/host_cost.py's pgbench scenario (each transaction INSERTs a prospect with
400 bytes of notes and UPDATEs its status) in three configurations, A B B A per
writer count, median of two passes:

  off        no triggers, no slot
  triggers   sql/install.sql of this checkout (the default capture), nobody listening
  decoding   no triggers; a publication of prospects and a pgoutput slot, streamed
             as it commits by pg_recvlogical to /dev/null (what a sidecar reading the
             WAL would receive), with the WAL sender's CPU per change

What "decoding" leaves out, so it is a lower bound for such a mode: the consumer's
own work on the changes (parsing them, writing journal rows in batches), and
REPLICA IDENTITY FULL, which a deleted row's organization would need (it makes the
CRM's UPDATEs and DELETEs log the whole old row). Needs the PostgreSQL server
binaries and pgbench; run as root, the cluster belongs to user postgres; removed
at the end. Not a test: figures depend on the machine.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))
from host_cost import SCRIPT  # noqa: E402
from trigger_cost import cpu_seconds  # noqa: E402
from trigger_instructions import Cluster  # noqa: E402


class LogicalCluster(Cluster):
    def __init__(self, workdir):
        super().__init__(workdir)
        with open(self.data / 'postgresql.conf', 'a') as f:
            f.write('fsync = on\nwal_level = logical\nmax_wal_senders = 4\nmax_replication_slots = 4\n'
                    'max_connections = 60\n')

    def query(self, db, sql):
        out = self._run(['psql', '-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', self.dir, '-p', self.port,
                         '-U', 'postgres', '-d', db, '-c', sql])
        return out.stdout.strip()


def prepare(cluster, name):
    """Same start for every run: no rows, the configuration's capture (or none)."""
    cluster.psql('crm', ROOT / 'sql/uninstall.sql', 'TRUNCATE prospects CASCADE')
    cluster.query('crm', "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = 'crm_rt_bench'")
    cluster.psql('crm', 'DROP PUBLICATION IF EXISTS crm_rt_bench')
    if name == 'triggers':
        cluster.psql('crm', ROOT / 'sql/install.sql')
    elif name == 'decoding':
        cluster.psql('crm', 'CREATE PUBLICATION crm_rt_bench FOR TABLE prospects',
                     "SELECT pg_create_logical_replication_slot('crm_rt_bench', 'pgoutput')")
    cluster.psql('crm', 'VACUUM ANALYZE prospects', 'CHECKPOINT')


def walsender_pid(cluster):
    for _ in range(100):
        pid = cluster.query('postgres', "SELECT pid FROM pg_stat_replication WHERE application_name = "
                                        "'pg_recvlogical' LIMIT 1")
        if pid:
            return int(pid)
        time.sleep(0.1)
    raise RuntimeError('pg_recvlogical did not connect')


def pgbench(cluster, writers, seconds, workdir):
    path = Path(workdir) / 'scenario.sql'
    path.write_text(SCRIPT)
    out = cluster._run(['pgbench', '-n', '-M', 'prepared', '-c', writers, '-j', min(writers, os.cpu_count() or 1),
                        '-T', seconds, '-h', cluster.dir, '-p', cluster.port, '-U', 'postgres', '-f', path, 'crm'],
                       timeout=seconds + 120)
    m = re.search(r'tps = ([\d.]+) \(without initial connection time\)', out.stdout)
    if not m:
        raise RuntimeError(f'pgbench failed:\n{out.stdout}\n{out.stderr}')
    return float(m.group(1))


def run(cluster, name, writers, seconds, workdir):
    prepare(cluster, name)
    recv = None
    try:
        if name == 'decoding':
            recv = subprocess.Popen(
                cluster.as_user + [str(cluster.bin / 'pg_recvlogical'), '-h', str(cluster.dir), '-p', str(cluster.port),
                                   '-U', 'postgres', '-d', 'crm', '--slot', 'crm_rt_bench', '--start',
                                   '-o', 'proto_version=1', '-o', 'publication_names=crm_rt_bench',
                                   '-f', '/dev/null', '-F', '1'],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            sender = walsender_pid(cluster)
            cpu0 = cpu_seconds(sender)
        tps = pgbench(cluster, writers, seconds, workdir)
        per_change = None
        if recv is not None:
            # let the sender catch up with the last commits, then its CPU over the run
            for _ in range(50):
                lag = cluster.query('postgres', "SELECT pg_current_wal_lsn() - confirmed_flush_lsn "
                                                "FROM pg_replication_slots WHERE slot_name = 'crm_rt_bench'")
                if lag and int(float(lag)) <= 0:
                    break
                time.sleep(0.1)
            changes = 2 * int(cluster.query('crm', 'SELECT count(*) FROM prospects'))
            per_change = (cpu_seconds(sender) - cpu0) / max(changes, 1) * 1e6
        return tps, per_change
    finally:
        if recv is not None:
            recv.terminate()
            try:
                recv.wait(10)
            except subprocess.TimeoutExpired:
                recv.kill()
                recv.wait(5)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=int, default=5, help='seconds per pgbench run (3..60)')
    p.add_argument('--writers', default='1,4,16', help='comma-separated client counts (1..32)')
    args = p.parse_args()
    try:
        writer_counts = [int(w) for w in args.writers.split(',')]
    except ValueError:
        p.error('--writers: comma-separated integers')
    if not 3 <= args.seconds <= 60 or not all(1 <= w <= 32 for w in writer_counts):
        p.error('--seconds 3..60, --writers 1..32')
    workdir = tempfile.mkdtemp(prefix='crm_rt_decoding_')
    os.chmod(workdir, 0o755)
    cluster_dir = Path(workdir) / 'cluster'
    cluster_dir.mkdir()
    cluster = LogicalCluster(cluster_dir)
    cluster.start()
    try:
        cluster.psql('postgres', 'CREATE DATABASE crm')
        cluster.psql('crm', ROOT / 'sql/examples/reference_crm.sql')
        load = os.getloadavg()[0]
        print(f'decoding_cost: PostgreSQL {cluster.bin}, wal_level=logical, fsync on, {args.seconds} s per run, '
              f'load {load:.1f}', flush=True)
        names = ['off', 'triggers', 'decoding']
        run(cluster, 'off', max(writer_counts), args.seconds, workdir)     # warm-up, not counted
        for writers in writer_counts:
            results = {n: [] for n in names}
            for order in (names, names[::-1]):
                for name in order:
                    results[name].append(run(cluster, name, writers, args.seconds, workdir))
            off = statistics.median(t for t, _ in results['off'])
            for name in names:
                tps = statistics.median(t for t, _ in results[name])
                cpu = [c for _, c in results[name] if c is not None]
                extra = f'   WAL sender CPU {statistics.median(cpu):.1f} µs per change' if cpu else ''
                passes = ' / '.join(f'{t:,.0f}' for t, _ in results[name])
                print(f'  {writers:>2} writers  {name:9} {tps:9,.0f} tps ({passes})   {off / tps:.2f}x slower'
                      f'{extra}', flush=True)
    finally:
        try:
            cluster.stop()
        finally:
            subprocess.run(['rm', '-rf', workdir])


if __name__ == '__main__':
    main()
