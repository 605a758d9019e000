"""Connection-scale benchmark: N idle-then-busy websockets on the sidecar and on the Node reference.

    python bench/connections.py [--server sidecar|node|both] [--clients 10000] [--orgs 100]
                                [--procs 0] [--idle-seconds 30] [--rate 100] [--seconds 10]
                                [--idle-only] [--trace-sidecar FILE] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

For each server, in one run: a scratch database (as bench/fanout.py), the server on
127.0.0.1, and several Node load-generator processes (bench/load_client.mjs, the official
socket.io-client, at most --per-proc sockets each; each process connects from its own
loopback address 127.0.0.<2+p> so that more than one port range of sockets fits).
Client i belongs to organization (i % orgs) + 1. Printed per server, side by side:

  * accept: wall time and server CPU (utime+stime from /proc/<pid>/stat) to accept all
    N websockets (the load generators connect --concurrency sockets at a time each);
  * RSS per connection: (VmRSS with N connected, 2 s after the last one - VmRSS before) / N;
  * idle CPU: server CPU over --idle-seconds with every socket connected and idle (the
    default 30 s covers one whole 25 s ping interval: every socket is pinged once);
  * latency: --rate prospects/s for --seconds (prospect j goes to organization j % orgs,
    i.e. to N / orgs sockets; 100/s to 100 organizations of 10,000 sockets = 10,000
    deliveries/s), commit-to-client p50/p99 over every delivery, and whether every
    expected delivery arrived exactly once.

--gc-report FILE runs the sidecar through bench/gc_sidecar.py, which records every
garbage collection's generation and pause; the report prints them per phase (start-up,
accept, idle, latency). The figures of such a run are otherwise those of a plain run.

--trace-sidecar FILE runs the sidecar under tracemalloc (bench/traced_sidecar.py) and,
with the sockets connected and idle, writes to FILE what holds the memory (top
allocation sites by traceback, objects by type) and how many asyncio tasks and timer
handles are alive per connection; the sidecar's RSS figures of a traced run are inflated
by tracemalloc's own bookkeeping, and a traced run stops there (no idle or latency figures).

The file-descriptor limit: this script raises RLIMIT_NOFILE (soft, and hard when it is
allowed to) for itself and the processes it starts, as a service manager would
(systemd LimitNOFILE=, docker --ulimit nofile=). Everything is loopback, bounded by
--max-seconds per server, and stops by itself. Not a test: figures depend on the machine.
"""
import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import shutil
import time
import urllib.request
from pathlib import Path

import jwt
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import (ROOT, SECRET, LoadClient, ScratchDB, cpu_seconds, free_port,  # noqa: E402
                    percentile, rss_kb, stop)

WARMUP_EVENTS = 10


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by children); returns the soft limit set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))   # root / CAP_SYS_RESOURCE
            hard = wanted
        except (ValueError, OSError):
            pass
    soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def start_server(kind, db_url, port, log_path, trace_file=None, gc_file=None):
    log = open(log_path, 'wb')
    if kind == 'sidecar':
        env = dict(os.environ, SIDECAR_DATABASE_URL=db_url, SIDECAR_JWT_SECRET=SECRET,
                   SIDECAR_HOST='127.0.0.1', SIDECAR_PORT=str(port), SIDECAR_LOG_LEVEL='WARNING')
        if trace_file:
            cmd = [sys.executable, str(ROOT / 'bench/traced_sidecar.py'), str(trace_file)]
        elif gc_file:
            cmd = [sys.executable, str(ROOT / 'bench/gc_sidecar.py'), str(gc_file)]
        else:
            cmd = [sys.executable, '-m', 'sidecar', 'serve']
    else:
        if not (ROOT / 'bench/node_reference/node_modules/socket.io').is_dir():
            sys.exit('bench/connections.py: run `npm ci --prefix bench/node_reference` first')
        env = dict(os.environ, NODE_REF_DATABASE_URL=db_url, NODE_REF_JWT_SECRET=SECRET,
                   NODE_REF_PORT=str(port), NODE_REF_RECOVERY='0')
        cmd = ['node', str(ROOT / 'bench/node_reference/server.js')]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
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
    raise RuntimeError(f'{kind} not ready within 60 s: {Path(log_path).read_text()[-2000:]}')


def run_one(kind, args):
    n = args.clients
    orgs = list(range(1, args.orgs + 1))
    client_org = [orgs[i % len(orgs)] for i in range(n)]
    n_events = WARMUP_EVENTS + int(args.rate * args.seconds)
    event_org = [orgs[j % len(orgs)] for j in range(n_events)]
    exp_ts = int(time.time()) + 3600
    tokens = [jwt.encode({'sub': str(i + 1), 'organization_id': client_org[i], 'exp': exp_ts},
                         SECRET, algorithm='HS256') for i in range(n)]
    procs = args.procs or math.ceil(n / args.per_proc)
    slices = [list(range(p, n, procs)) for p in range(procs)]   # every process in every org
    workdir = Path(tempfile.mkdtemp(prefix=f'crm_rt_conn_{kind}_'))
    result = {'server': kind, 'clients': n, 'procs': procs}
    server, clients = None, []
    deadline = time.monotonic() + args.max_seconds
    trace = Path(args.trace_sidecar).resolve() if (args.trace_sidecar and kind == 'sidecar') else None
    gc_file = Path(args.gc_report).resolve() if (args.gc_report and kind == 'sidecar') else None

    def gc_mark():
        if gc_file:
            server.send_signal(signal.SIGUSR2)     # the collector's pauses since the previous mark
    try:
        with ScratchDB(args.pg) as db, psycopg.connect(db.url, autocommit=True) as writer:
            port = free_port()
            if gc_file and gc_file.exists():
                gc_file.unlink()
            server = start_server(kind, db.url, port, workdir / 'server.log', trace, gc_file)
            if trace:
                server.send_signal(signal.SIGUSR1)     # start tracing, before the first connection
            time.sleep(1.0)
            gc_mark()       # mark 1: start-up
            rss0, cpu0, t0 = rss_kb(server.pid), cpu_seconds(server.pid), time.monotonic()
            for p, idx in enumerate(slices):
                per_org = {}
                for i in idx:
                    per_org[client_org[i]] = per_org.get(client_org[i], 0) + 1
                expect = sum(per_org.get(o, 0) for o in event_org)
                sub = workdir / f'load{p}'
                sub.mkdir()
                clients.append(LoadClient({
                    'url': f'http://127.0.0.1:{port}', 'tokens': [tokens[i] for i in idx],
                    'expect': expect, 'timeout_s': args.max_seconds, 'concurrency': args.concurrency,
                    'connect_timeout_s': 120, 'transports': ['websocket'],
                    'local_address': f'127.0.0.{2 + p}'}, sub))
            readies = [c.wait_for('ready', max(1, deadline - time.monotonic())) for c in clients]
            t1, cpu1 = time.monotonic(), cpu_seconds(server.pid)
            gc_mark()       # mark 2: accepting every socket
            bad = [r for r in readies if not r or r['type'] != 'ready' or r['failed']]
            connected = sum(r['connected'] for r in readies if r and r['type'] == 'ready')
            if bad:
                raise RuntimeError(f'{kind}: {connected} of {n} connected; load client said {bad[:2]}')
            time.sleep(2.0)
            rss1 = rss_kb(server.pid)
            result.update(connected=connected, accept_s=t1 - t0, accept_cpu_s=cpu1 - cpu0,
                          rss0_kb=rss0, rss1_kb=rss1, rss_per_conn_kb=(rss1 - rss0) / n)
            if trace:
                server.send_signal(signal.SIGUSR1)     # report now, outside the idle window
                time.sleep(1.0)
                for _ in range(600):
                    if trace.exists() and trace.read_text().endswith('END\n'):
                        break
                    time.sleep(0.5)
                result['trace'] = str(trace)
                return result   # tracing slows the server down: its CPU and latency mean nothing
            i0 = cpu_seconds(server.pid)
            time.sleep(args.idle_seconds)
            result['idle_cpu'] = (cpu_seconds(server.pid) - i0) / args.idle_seconds
            gc_mark()       # mark 3: the rest of accepting, 2 s, and the idle window
            if args.idle_only:
                return result
            if time.monotonic() > deadline:
                raise RuntimeError('ran out of time before the latency phase')

            insert = ('INSERT INTO prospects (organization_id, firstname, lastname, email, phone,'
                      ' status, source, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id')

            def write(j):
                pid = writer.execute(insert, (event_org[j], f'First{j}', f'Last{j}', f'p{j}@example.com',
                                              '+33 1 23 45 67 89', 'new', 'bench', 'A short note.'),
                                     prepare=True).fetchone()[0]
                return str(pid), time.time()

            for j in range(WARMUP_EVENTS):
                write(j)
            time.sleep(1.0)
            commits = {}
            l0, t_start = cpu_seconds(server.pid), time.monotonic()
            for i in range(n_events - WARMUP_EVENTS):
                pause = t_start + i / args.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pid, t = write(WARMUP_EVENTS + i)
                commits[f'prospect:created {pid}'] = t
            settle = time.monotonic() + min(30.0, max(1.0, deadline - time.monotonic()))
            summaries = [c.wait_for('summary', max(0.1, settle - time.monotonic())) for c in clients]
            result['busy_cpu'] = (cpu_seconds(server.pid) - l0) / (time.monotonic() - t_start)
            gc_mark()       # mark 4: the latency phase and its settling
            if gc_file:
                time.sleep(0.5)
                result['gc'] = gc_file.read_text() if gc_file.exists() else '(no report)'
            if kind == 'sidecar':       # what the server says it wrote (warm-up included)
                try:
                    with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5) as m:
                        for line in m.read().decode().splitlines():
                            if line.startswith('crm_realtime_events_emitted_total{'):
                                result['server_wrote'] = result.get('server_wrote', 0) + float(line.split()[-1])
                except OSError as exc:
                    result['server_wrote_error'] = f'{exc.__class__.__name__}: {exc}'
            for c, s in zip(clients, summaries):
                if not s or s['type'] != 'summary':
                    c.finish()
            summaries = [s if s and s['type'] == 'summary' else c.wait_for('summary', 10) or {}
                         for c, s in zip(clients, summaries)]
            lat, delivered = [], 0
            for c in clients:
                times = json.loads(c.out_path.read_text()) if c.out_path.exists() else {}
                for key, t_commit in commits.items():
                    recv = times.get(key, [])
                    delivered += len(recv)
                    lat.extend(r - t_commit * 1000 for r in recv)
            lat.sort()
            expected = sum(n // len(orgs) + (1 if (o - 1) < n % len(orgs) else 0)
                           for o in event_org[WARMUP_EVENTS:])
            result.update(delivered=delivered, expected=expected,
                          exact=(delivered == expected and all(s.get('duplicates') == 0 for s in summaries)
                                 and all(s.get('received') == s.get('expected') for s in summaries)),
                          disconnects=sum(s.get('disconnects') or 0 for s in summaries),
                          per_socket=(min(s.get('per_socket_min') or 0 for s in summaries),
                                      max(s.get('per_socket_max') or 0 for s in summaries)),
                          short=[(s.get('received'), s.get('expected')) for s in summaries
                                 if s.get('received') != s.get('expected')],
                          p50=percentile(lat, 50), p99=percentile(lat, 99),
                          max=lat[-1] if lat else float('nan'),
                          deliveries_per_s=delivered / args.seconds)
    finally:
        for c in clients:
            c.close()
        stop(server, timeout=20)
        if not result.get('exact', True) and (workdir / 'server.log').exists():
            kept = Path(tempfile.gettempdir()) / f'crm_rt_conn_{kind}_{os.getpid()}.log'
            shutil.copy(workdir / 'server.log', kept)
            result['server_log'] = str(kept)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(r, args):
    n = r['clients']
    if 'trace' in r:
        print(f"\n== {r['server']} under tracemalloc: {r['rss_per_conn_kb']:.1f} KB RSS per connection"
              f" (inflated by tracing); report in {r['trace']} ==", flush=True)
        return
    print(f"\n== {r['server']}: {n:,} websockets ({r['procs']} load processes) in {args.orgs} organizations ==")
    print(f"  accept                {r['accept_s']:.1f} s wall, {r['accept_cpu_s']:.2f} s server CPU"
          f" ({n / r['accept_s']:,.0f} connections/s; {1e6 * r['accept_cpu_s'] / n:.0f} us CPU each)")
    print(f"  RSS                   {r['rss_per_conn_kb']:.1f} KB per connection ({r['rss0_kb'] / 1024:.0f} MB"
          f" before -> {r['rss1_kb'] / 1024:.0f} MB with {r['connected']:,} connected)")
    print(f"  idle CPU              {100 * r['idle_cpu']:.2f}% of a core over {args.idle_seconds:g} s")
    if args.idle_only:
        return
    ok = 'each exactly once' if r['exact'] else (
        f"MISMATCH, {r['disconnects']} disconnects; events per socket {r['per_socket'][0]}.."
        f"{r['per_socket'][1]}; load processes short (received, expected): {r['short']}")
    print(f"  latency               p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.0f} ms at"
          f" {r['deliveries_per_s']:,.0f} deliveries/s; {r['delivered']:,} of {r['expected']:,} ({ok});"
          f" server CPU {100 * r['busy_cpu']:.0f}% of a core", flush=True)
    if 'server_wrote' in r:
        print(f"  server wrote          {r['server_wrote']:,.0f} deliveries (warm-up included)", flush=True)
    if 'server_wrote_error' in r:
        print(f"  server /metrics       did not answer: {r['server_wrote_error']}", flush=True)
    if r.get('server_log'):
        print(f"  server log kept in    {r['server_log']}", flush=True)
    if r.get('gc'):
        print('  garbage collector     (marks: 1 start-up, 2 accept, 3 idle, 4 latency)')
        for line in r['gc'].splitlines():
            print(f'    {line}', flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--server', choices=['sidecar', 'node', 'both'], default='both')
    p.add_argument('--clients', type=int, default=10000, help='websockets (100..60000)')
    p.add_argument('--orgs', type=int, default=100)
    p.add_argument('--procs', type=int, default=0, help='load processes (0: clients / --per-proc)')
    p.add_argument('--per-proc', type=int, default=2500, help='sockets per load process')
    p.add_argument('--concurrency', type=int, default=50, help='connections opened at a time per process')
    p.add_argument('--idle-seconds', type=float, default=30.0)
    p.add_argument('--rate', type=float, default=100.0, help='prospects written per second')
    p.add_argument('--seconds', type=float, default=10.0, help='length of the latency phase')
    p.add_argument('--max-seconds', type=float, default=400.0, help='time limit per server')
    p.add_argument('--idle-only', action='store_true',
                   help='stop after the idle window (accept, RSS and idle CPU only; a quick run)')
    p.add_argument('--trace-sidecar', metavar='FILE', help='run the sidecar under tracemalloc, report to FILE')
    p.add_argument('--gc-report', metavar='FILE', help="record the sidecar's garbage-collector pauses per phase into FILE")
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    args = p.parse_args()
    if not 100 <= args.clients <= 60000 or not 1 <= args.orgs <= args.clients:
        p.error('--clients must be 100..60000 and --orgs 1..clients')
    if not 0 < args.rate <= 2000 or not 1 <= args.seconds <= 60 or not 0 < args.idle_seconds <= 60:
        p.error('--rate must be in (0, 2000], --seconds 1..60, --idle-seconds in (0, 60]')
    if not 0 <= args.procs <= 40 or not 100 <= args.per_proc <= 10000 or not 30 <= args.max_seconds <= 900:
        p.error('--procs 0..40, --per-proc 100..10000, --max-seconds 30..900')
    host = psycopg.conninfo.conninfo_to_dict(args.pg).get('host', '127.0.0.1')
    if host not in ('127.0.0.1', 'localhost', '::1') and not host.startswith('/'):
        p.error('--pg must point at this machine (loopback or a Unix socket)')
    limit = raise_nofile(args.clients + 4096)
    if limit < args.clients + 256:
        sys.exit(f'bench/connections.py: RLIMIT_NOFILE is {limit} and cannot be raised to'
                 f' {args.clients + 4096} (raise the hard limit: ulimit -Hn, LimitNOFILE=)')
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or '?'
    print(f'code {head}; RLIMIT_NOFILE {limit}; load {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores',
          flush=True)
    kinds = ['sidecar', 'node'] if args.server == 'both' else [args.server]
    results = []
    for kind in kinds:
        r = run_one(kind, args)
        report(r, args)
        results.append(r)
    print('\n== summary ==')
    print(f"  {'':8} {'KB/conn':>9} {'accept s':>9} {'accept CPU':>11} {'us/conn':>8} {'idle %':>7}"
          f" {'p50 ms':>7} {'p99 ms':>7} {'exact':>6}")
    results = [r for r in results if 'trace' not in r]
    for r in results:
        print(f"  {r['server']:8} {r['rss_per_conn_kb']:9.1f} {r['accept_s']:9.1f} {r['accept_cpu_s']:11.2f}"
              f" {1e6 * r['accept_cpu_s'] / r['clients']:8.0f} {100 * r['idle_cpu']:7.2f}"
              f" {r.get('p50', float('nan')):7.1f} {r.get('p99', float('nan')):7.1f} {str(r.get('exact', '-')):>6}")
    if not all(r.get('exact', True) for r in results):
        print('  WARNING: some server did not deliver every expected event exactly once')
        sys.exit(1)


if __name__ == '__main__':
    main()
