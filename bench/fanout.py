"""Fan-out benchmark: the sidecar and a minimal Node socket.io server, side by side.

    python bench/fanout.py [--server sidecar|node|both] [--clients 200] [--events 500]
                           [--rate 50] [--orgs 1] [--lean] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

For each server: a scratch database (sql/examples/reference_crm.sql + sql/install.sql,
dropped at the end), the server as a subprocess on 127.0.0.1 (`python -m sidecar serve`
with SIDECAR_* variables, or `node bench/node_reference/server.js`), one Node process
holding N official socket.io-client websocket connections (bench/load_client.mjs), and
K single-row INSERTs into prospects, each its own transaction, written at a steady rate.
Client i belongs to organization (i % orgs) + 1 and prospect j to (j % orgs) + 1, so an
event is delivered to N / orgs sockets.

Printed per server:
  * delivered events (and whether every expected delivery arrived exactly once);
  * server CPU seconds per 1,000 delivered events: utime+stime of the server process
    from /proc/<pid>/stat, from just before the first measured write to the last
    delivery; plus the same for the server's own PostgreSQL backends (LISTEN + reads);
  * commit-to-client latency p50/p99/max over every (event, socket) delivery: client
    receive time minus the time the writer's autocommit INSERT returned, same clock;
    also the time until the LAST socket of the room had it (p50/p99), per event;
  * server RSS per connection: VmRSS after N sockets connected minus before, / N, in KB;
  * the server's CPU while the N sockets are connected and idle (% of a core);
  * delivered events per second (first measured commit to last delivery).

--lean turns on lean capture (crm_realtime.lean('prospects')) in the sidecar's
database: the journal then holds keys, and the sidecar builds each payload when it
reads (its read side's cost). The Node reference reads payload rows only, so its
database keeps the default capture.

Everything runs on this machine: the server, PostgreSQL, the load client and this
driver share the cores, so figures are comparable between servers run the same way,
not absolute. Bounded: at most --max-seconds per server; it stops by itself and kills
what it started. --profile DIR also records the sidecar with py-spy (if installed)
into DIR; a profiled run's figures are perturbed by the sampling.
Not a test: figures depend on the machine.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
SECRET = 'bench-secret-' + 'x' * 40
CLK_TCK = os.sysconf('SC_CLK_TCK')
WARMUP_EVENTS = 20
FIGURES = ('cpu_per_1k', 'p50', 'p99', 'max', 'rss_per_conn_kb', 'events_per_s', 'idle_cpu')


# ---- process figures ---------------------------------------------------------------

def cpu_times(pid: int):
    """(utime, stime) of one process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def rss_kb(pid: int) -> int:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for pid {pid}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def percentile(sorted_values, q):
    if not sorted_values:
        return float('nan')
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# ---- scratch database ----------------------------------------------------------------

class ScratchDB:
    def __init__(self, admin_url, lean=False):
        self.admin_url = admin_url
        self.lean = lean
        self.name = f'crm_rt_bench_{uuid.uuid4().hex[:8]}'
        info = psycopg.conninfo.conninfo_to_dict(admin_url)
        self.url = (f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}"
                    f":{info.get('port', 5432)}/{self.name}")

    def __enter__(self):
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute((ROOT / 'sql/examples/reference_crm.sql').read_text())
            conn.execute((ROOT / 'sql/install.sql').read_text())
            if self.lean:
                conn.execute("SELECT crm_realtime.lean('prospects')")
        return self

    def __exit__(self, *exc):
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def backend_pids(conn, dbname, exclude):
    rows = conn.execute(
        'SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> ALL(%s)',
        (dbname, list(exclude))).fetchall()
    return [r[0] for r in rows]


def backends_cpu(pids):
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass                         # a backend that ended meanwhile
    return total


# ---- servers ------------------------------------------------------------------------

def start_server(kind, db_url, port, log_path, node_recovery=False):
    log = open(log_path, 'wb')
    if kind == 'sidecar':
        env = dict(os.environ, SIDECAR_DATABASE_URL=db_url, SIDECAR_JWT_SECRET=SECRET,
                   SIDECAR_HOST='127.0.0.1', SIDECAR_PORT=str(port), SIDECAR_LOG_LEVEL='WARNING',
                   SIDECAR_DRAIN_SECONDS='0')   # no load balancer: stop() at once
        cmd = [sys.executable, '-m', 'sidecar', 'serve']
    else:
        if not (ROOT / 'bench/node_reference/node_modules/socket.io').is_dir():
            sys.exit('bench/fanout.py: run `npm ci --prefix bench/node_reference` first')
        env = dict(os.environ, NODE_REF_DATABASE_URL=db_url, NODE_REF_JWT_SECRET=SECRET,
                   NODE_REF_PORT=str(port), NODE_REF_RECOVERY='1' if node_recovery else '0')
        cmd = ['node', str(ROOT / 'bench/node_reference/server.js')]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f'{kind} exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}')
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f'{kind} not ready within 20 s: {Path(log_path).read_text()[-2000:]}')


def stop(proc, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LoadClient:
    """bench/load_client.mjs as a subprocess; its JSON lines are read by a thread."""

    def __init__(self, config, workdir):
        self.out_path = Path(workdir) / 'receive_times.json'
        cfg_path = Path(workdir) / 'load_config.json'
        cfg_path.write_text(json.dumps(dict(config, out=str(self.out_path))))
        self.proc = subprocess.Popen(['node', str(ROOT / 'bench/load_client.mjs'), str(cfg_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._cond:
                self.lines.append(msg)
                self._cond.notify_all()
        with self._cond:
            self.lines.append({'type': 'eof'})
            self._cond.notify_all()

    def wait_for(self, type_, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.lines:
                    if msg['type'] in (type_, 'eof'):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def finish(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('finish\n')
                self.proc.stdin.flush()
            except OSError:
                pass

    def close(self):
        self.finish()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_profiler(pid, out_dir):
    spy = shutil.which('py-spy') or str(Path(sys.executable).with_name('py-spy'))
    if not Path(spy).exists():
        print('  (py-spy not found; no profile)')
        return None, None
    out = Path(out_dir).resolve() / f'sidecar-{pid}.txt'
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([spy, 'record', '-p', str(pid), '--format', 'raw', '-r', '200',
                             '-o', str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)           # let it attach before the measured part
    return proc, out


# ---- one run -----------------------------------------------------------------------

def run_one(kind, args):
    n, k = args.clients, args.events
    orgs = list(range(1, args.orgs + 1))
    client_org = [orgs[i % len(orgs)] for i in range(n)]
    per_org = {o: client_org.count(o) for o in orgs}
    exp_ts = int(time.time()) + 3600
    tokens = [jwt.encode({'sub': str(i + 1), 'organization_id': client_org[i], 'exp': exp_ts},
                         SECRET, algorithm='HS256') for i in range(n)]
    event_org = [orgs[j % len(orgs)] for j in range(WARMUP_EVENTS + k)]
    expected = sum(per_org[o] for o in event_org)
    measured_expected = sum(per_org[o] for o in event_org[WARMUP_EVENTS:])

    workdir = tempfile.mkdtemp(prefix=f'crm_rt_fanout_{kind}_')
    server = client = spy = None
    result = {'server': kind}
    deadline = time.monotonic() + args.max_seconds
    try:
        with ScratchDB(args.pg, lean=args.lean and kind == 'sidecar') as db, \
                psycopg.connect(db.url, autocommit=True) as writer:
            port = free_port()
            server = start_server(kind, db.url, port, Path(workdir) / 'server.log', args.node_recovery)
            my_pid = writer.execute('SELECT pg_backend_pid()').fetchone()[0]
            time.sleep(0.5)
            rss0 = rss_kb(server.pid)
            client = LoadClient({'url': f'http://127.0.0.1:{port}', 'tokens': tokens,
                                 'expect': expected, 'timeout_s': args.max_seconds,
                                 'transports': ['websocket']}, workdir)
            ready = client.wait_for('ready', min(60, deadline - time.monotonic()))
            if not ready or ready['type'] != 'ready' or ready['failed']:
                raise RuntimeError(f'load client did not connect every socket: {ready}')
            time.sleep(1.0)          # let the server settle before reading its RSS
            rss1 = rss_kb(server.pid)
            # what N idle sockets cost (pings, timers), to tell it apart from per-event work
            idle0 = cpu_seconds(server.pid)
            time.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(server.pid) - idle0) / args.idle_seconds if args.idle_seconds else 0.0
            result.update(connected=ready['connected'], connect_ms=ready['connect_ms'],
                          rss_before_kb=rss0, rss_after_kb=rss1,
                          rss_per_conn_kb=(rss1 - rss0) / n, idle_cpu=idle_cpu)

            insert = ('INSERT INTO prospects (organization_id, firstname, lastname, email, phone,'
                      ' status, source, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id')

            def write(j):
                org = event_org[j]
                pid = writer.execute(insert, (org, f'First{j}', f'Last{j}', f'p{j}@example.com',
                                              '+33 1 23 45 67 89', 'new', 'bench',
                                              'A short note about this prospect.'),
                                     prepare=True).fetchone()[0]
                return str(pid), time.time()   # the autocommit INSERT has committed

            # warm-up (first-event costs: imports, JIT, prepared statements), not measured
            for j in range(WARMUP_EVENTS):
                write(j)
            time.sleep(1.5)

            pg_pids = backend_pids(writer, db.name, [my_pid])
            if args.profile and kind == 'sidecar':
                spy, spy_out = start_profiler(server.pid, args.profile)
                result['profile'] = str(spy_out) if spy else None
            (user0, sys0), pg0 = cpu_times(server.pid), backends_cpu(pg_pids)
            commits = {}
            t_start = time.monotonic()
            for i in range(k):
                j = WARMUP_EVENTS + i
                due = t_start + i / args.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pid, t = write(j)
                commits[f'prospect:created {pid}'] = t
                if time.monotonic() > deadline:
                    raise RuntimeError('ran out of time while writing')
            write_s = time.monotonic() - t_start
            summary = client.wait_for('summary', max(1, deadline - time.monotonic()))
            (user1, sys1), pg1 = cpu_times(server.pid), backends_cpu(pg_pids)
            cpu0, cpu1 = user0 + sys0, user1 + sys1
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            if summary is None or summary['type'] != 'summary':
                client.finish()
                summary = client.wait_for('summary', 10) or {}

            times = json.loads(client.out_path.read_text()) if client.out_path.exists() else {}
            lat, last_socket, delivered, last_recv = [], [], 0, 0.0
            for key, t_commit in commits.items():
                recv = times.get(key, [])
                delivered += len(recv)
                if recv:
                    d = [r - t_commit * 1000 for r in recv]
                    lat.extend(d)
                    last_socket.append(max(d))
                    last_recv = max(last_recv, max(recv) / 1000)
            lat.sort()
            last_socket.sort()
            first_commit = min(commits.values())
            result.update(
                delivered=delivered, expected=measured_expected,
                exact=(delivered == measured_expected and summary.get('duplicates') == 0
                       and summary.get('received') == expected),
                duplicates=summary.get('duplicates'), disconnects=summary.get('disconnects'),
                write_s=write_s,
                cpu_s=cpu1 - cpu0, cpu_sys_s=sys1 - sys0, pg_cpu_s=pg1 - pg0,
                cpu_per_1k=(cpu1 - cpu0) / delivered * 1000 if delivered else float('nan'),
                pg_cpu_per_1k=(pg1 - pg0) / delivered * 1000 if delivered else float('nan'),
                p50=percentile(lat, 50), p99=percentile(lat, 99), max=lat[-1] if lat else float('nan'),
                mean=statistics.fmean(lat) if lat else float('nan'),
                last_socket_p50=percentile(last_socket, 50), last_socket_p99=percentile(last_socket, 99),
                events_per_s=delivered / (last_recv - first_commit) if delivered else 0.0,
                client_cpu_s=summary.get('client_cpu_s'))
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if client is not None:
            client.close()
        stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(r, args):
    label = r['server'] + (" (socket.io recovery on)" if r['server'] == 'node' and args.node_recovery else '')
    print(f"\n== {label}: {args.clients} websocket clients in {args.orgs} organization(s), "
          f"{args.events} prospects at {args.rate:g}/s ==")
    print(f"  delivered events        {r['delivered']:,} of {r['expected']:,} expected"
          f"{' (each exactly once)' if r['exact'] else ' (MISMATCH: duplicates=%s, disconnects=%s)' % (r['duplicates'], r['disconnects'])}")
    print(f"  server CPU              {r['cpu_per_1k']:.3f} s per 1,000 delivered events"
          f" ({r['cpu_s']:.2f} s in all, {r['cpu_sys_s']:.2f} s of it in the kernel);"
          f" its PostgreSQL backends {r['pg_cpu_per_1k']:.3f} s per 1,000")
    print(f"  commit->client latency  p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms"
          f" (mean {r['mean']:.1f}); last socket of the room: p50 {r['last_socket_p50']:.1f}, "
          f"p99 {r['last_socket_p99']:.1f} ms")
    print(f"  idle server CPU         {100 * r['idle_cpu']:.1f}% of a core with {r['connected']} sockets connected")
    print(f"  server RSS              {r['rss_per_conn_kb']:.1f} KB per connection"
          f" ({r['rss_before_kb'] / 1024:.1f} MB idle -> {r['rss_after_kb'] / 1024:.1f} MB with "
          f"{r['connected']} sockets; connected in {r['connect_ms']} ms)")
    print(f"  throughput              {r['events_per_s']:,.0f} delivered events/s"
          f" (writes took {r['write_s']:.1f} s; load client used {r['client_cpu_s'] or 0:.1f} s CPU)")
    if r.get('profile'):
        print(f"  py-spy profile          {r['profile']}")


def code_version():
    """The commit measured, and whether sidecar/ differed from it (figures move with the code)."""
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'sidecar'], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split('\n')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not a git checkout)'
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else '')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--server', choices=['sidecar', 'node', 'both'], default='both')
    p.add_argument('--clients', type=int, default=200, help='websocket connections (1..2000)')
    p.add_argument('--events', type=int, default=500, help='prospects written (1..20000)')
    p.add_argument('--rate', type=float, default=50.0, help='writes per second (steady)')
    p.add_argument('--orgs', type=int, default=1, help='organizations the clients are spread over')
    p.add_argument('--node-recovery', action='store_true',
                   help="turn on socket.io's in-memory connectionStateRecovery in the Node reference")
    p.add_argument('--idle-seconds', type=float, default=3.0,
                   help='seconds the connected, idle server is watched for its baseline CPU (0..30)')
    p.add_argument('--repeat', type=int, default=1, help='runs per server (1..5); medians are printed')
    p.add_argument('--max-seconds', type=float, default=120.0, help='time limit per server')
    p.add_argument('--lean', action='store_true',
                   help="lean capture in the sidecar's database (the Node reference keeps the default)")
    p.add_argument('--profile', metavar='DIR', help='record the sidecar with py-spy into DIR')
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = p.parse_args()
    if not 1 <= args.clients <= 2000 or not 1 <= args.events <= 20000:
        p.error('--clients must be 1..2000 and --events 1..20000')
    if not 0 < args.rate <= 5000 or not 1 <= args.orgs <= args.clients:
        p.error('--rate must be in (0, 5000] and --orgs in 1..clients')
    if not 0 <= args.idle_seconds <= 30:
        p.error('--idle-seconds must be 0..30')
    if not 1 <= args.repeat <= 5:
        p.error('--repeat must be 1..5')
    if not 10 <= args.max_seconds <= 600:
        p.error('--max-seconds must be 10..600')
    host = psycopg.conninfo.conninfo_to_dict(args.pg).get('host', '127.0.0.1')
    if host not in ('127.0.0.1', 'localhost', '::1') and not host.startswith('/'):
        p.error('--pg must point at this machine (loopback or a Unix socket)')
    kinds = ['sidecar', 'node'] if args.server == 'both' else [args.server]
    print(f'code: {code_version()}' + ('; lean capture in the sidecar\'s database' if args.lean else '') +
          f'; load: {os.getloadavg()[0]:.2f} (1-min load average before the run),'
          f' {os.cpu_count()} cores')
    results = {kind: [] for kind in kinds}
    for _ in range(args.repeat):          # alternate the servers, so drift hits both alike
        for kind in kinds:
            r = run_one(kind, args)
            report(r, args)
            results[kind].append(r)
    med = {kind: {f: statistics.median(r[f] for r in rs) for f in FIGURES}
           for kind, rs in results.items()}
    print(f'\n== {"median of %d runs (range)" % args.repeat if args.repeat > 1 else "summary"} ==')
    cols = (('cpu_per_1k', 'CPU s/1k ev', 1, '.3f'), ('p50', 'p50 ms', 1, '.1f'), ('p99', 'p99 ms', 1, '.1f'),
            ('max', 'max ms', 1, '.0f'), ('rss_per_conn_kb', 'KB/conn', 1, '.1f'),
            ('events_per_s', 'ev/s', 1, '.0f'), ('idle_cpu', 'idle %', 100, '.1f'))
    width = 20 if args.repeat > 1 else 11
    print('  ' + ' ' * 8 + ''.join(f' {title:>{width}}' for _, title, _, _ in cols))
    for kind, rs in results.items():
        cells = []
        for f, _, scale, fmt in cols:
            cell = format(med[kind][f] * scale, fmt)
            if args.repeat > 1:
                lo, hi = min(r[f] for r in rs) * scale, max(r[f] for r in rs) * scale
                cell += f' ({lo:{fmt}}-{hi:{fmt}})'
            cells.append(f' {cell:>{width}}')
        print(f'  {kind:8}' + ''.join(cells))
    if len(med) == 2:
        s, n = med['sidecar'], med['node']
        print(f"  sidecar/node: CPU per event x{s['cpu_per_1k'] / n['cpu_per_1k']:.2f}, latency p50"
              f" x{s['p50'] / n['p50']:.2f} p99 x{s['p99'] / n['p99']:.2f}, RSS per connection"
              f" x{s['rss_per_conn_kb'] / n['rss_per_conn_kb']:.2f}")
    if not all(r['exact'] for rs in results.values() for r in rs):
        print('  WARNING: some run did not deliver every expected event exactly once')
        sys.exit(1)

if __name__ == '__main__':
    main()
