"""Replay 10,000 missed events to one reconnecting socket.io-client and print how long it took.

    python bench/replay_10k.py [--events 10000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

A real sidecar (in this process), a real database (a scratch database created
and dropped here) and the official Node socket.io-client (tests/js). The client
connects, receives one event, drops its transport and stays away while N
prospects are inserted, then reconnects with its pid/offset; the time from the
reconnect command to the last replayed event is printed with the throughput.
Not a test: figures depend on the machine.
"""
import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import jwt
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.app import Sidecar  # noqa: E402
from sidecar.settings import load_settings  # noqa: E402
from sidecar.sqlfiles import sql_text  # noqa: E402

SECRET = 'bench-secret-' + 'x' * 40


async def main(args):
    dbname = f'crm_rt_bench_{uuid.uuid4().hex[:8]}'
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    info = psycopg.conninfo.conninfo_to_dict(args.pg)
    url = f"postgresql://{info.get('user', 'postgres')}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{dbname}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql_text('examples/reference_crm.sql'))
            conn.execute(sql_text('install.sql'))
        settings = load_settings({'SIDECAR_DATABASE_URL': url, 'SIDECAR_JWT_SECRET': SECRET,
                                  'SIDECAR_PORT': '0', 'SIDECAR_LOG_LEVEL': 'WARNING'})
        sc = Sidecar(settings)
        await sc.start()
        while not sc.listener.ready:
            await asyncio.sleep(0.05)
        token = jwt.encode({'sub': '1', 'organization_id': 1, 'exp': int(time.time()) + 3600},
                           SECRET, algorithm='HS256')
        cfg = {'url': f'http://127.0.0.1:{sc.port}', 'token': token, 'transports': ['websocket']}
        proc = await asyncio.create_subprocess_exec(
            'node', str(ROOT / 'tests/js/client.mjs'), cwd=str(ROOT / 'tests/js'),
            env=dict(os.environ, CLIENT_CONFIG=json.dumps(cfg)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2 ** 24)

        async def read_until(pred):
            while True:
                msg = json.loads(await proc.stdout.readline())
                if pred(msg):
                    return msg

        async def send(**cmd):
            proc.stdin.write((json.dumps(cmd) + '\n').encode())
            await proc.stdin.drain()

        await read_until(lambda m: m['type'] == 'connect')
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'first')")
        await read_until(lambda m: m['type'] == 'event')
        await send(cmd='hold')
        await read_until(lambda m: m['type'] == 'disconnect')

        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO prospects (organization_id, firstname, email, notes) VALUES (1, %s, %s, %s)",
                        [(f'p{i}', f'p{i}@example.com', 'a short note') for i in range(args.events)])
        print(f'wrote {args.events} prospects (one transaction) in {time.perf_counter() - t0:.2f} s')
        await asyncio.sleep(0.5)   # the live stream passes them by

        t0 = time.perf_counter()
        await send(cmd='resume')
        connect = await read_until(lambda m: m['type'] == 'connect')
        t_connect = time.perf_counter() - t0
        received = 0
        last = None
        while received < args.events:
            msg = await read_until(lambda m: m['type'] == 'event')
            received += 1
            last = msg
        elapsed = time.perf_counter() - t0
        assert connect['recovered'] is True, connect
        assert last['args'][0]['firstname'] == f'p{args.events - 1}'
        print(f'reconnect answered in {t_connect * 1000:.0f} ms (recovered={connect["recovered"]})')
        print(f'replayed {received} missed events to one client in {elapsed:.2f} s '
              f'({received / elapsed:,.0f} events/s)')
        await send(cmd='exit')
        await proc.wait()
        await sc.stop()
    finally:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--events', type=int, default=10_000)
    p.add_argument('--pg', default=os.environ.get('CRM_REALTIME_TEST_PG',
                                                  'postgresql://postgres@127.0.0.1:5432/postgres'))
    asyncio.run(main(p.parse_args()))
