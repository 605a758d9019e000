"""What the Odoo addon's "new lead published once, at commit" fold costs a lead's creation.

    python bench/addon_lead_fold.py [--single 1000] [--batch 5000] [--rounds 3]
                                    [--pg postgresql://postgres@127.0.0.1:5432/postgres]

On a scratch database shaped like Odoo's (tests/addon/support.py, created and dropped
here), with the addon's install hook applied (addon/17.0/crm_realtime/lib/schema.py),
it replays the statements Odoo's ORM sends to create a lead without a stage -- the
INSERT, then the UPDATE of the computed stored fields at flush -- and times, from the
client, two workloads:

  single   --single transactions of one lead each (a user saving a form)
  batch    one transaction creating --batch leads, flushed with one UPDATE joined on a
           VALUES list (an import), timed from its first statement to its COMMIT

once with the addon's deferred trigger and once after dropping it (the generic capture
alone), alternating for --rounds rounds, and prints the medians side by side: µs per
lead for single, ms for the whole batch and µs per lead, and the journal rows each
leaves (the fold leaves one per lead; the capture alone two). synchronous_commit is off
so a WAL flush per commit does not hide the difference. Loopback only; bounded; the
scratch database is dropped. Not a test: figures depend on the machine.
"""
import argparse
import importlib
import importlib.util
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / 'addon' / '17.0' / 'crm_realtime'


def _load(name, path, package_dir=None):
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load('bench_addon_lib', MODULE / 'lib' / '__init__.py', MODULE / 'lib')
schema = importlib.import_module("bench_addon_lib.schema")
ODOO_SCHEMA = _load('bench_addon_support_schema', ROOT / 'tests' / 'addon' / 'support.py').ODOO_SCHEMA

INSERT = """INSERT INTO "crm_lead" ("active", "company_id", "contact_name", "create_date", "create_uid",
    "email_from", "name", "priority", "type", "write_date", "write_uid")
    VALUES (true, 1, 'Ada', (now() at time zone 'UTC'), 2, 'ada@example.com', 'Lead', '0', 'lead',
            (now() at time zone 'UTC'), 2) RETURNING "id" """
FLUSH_ONE = """UPDATE "crm_lead" SET "stage_id" = 1, "team_id" = 1, "write_uid" = 2,
    "write_date" = (now() at time zone 'UTC') WHERE id = %s"""
FLUSH_BATCH = """UPDATE "crm_lead" SET "stage_id" = "__tmp"."stage_id"::int4, "team_id" = 1,
    "write_date" = (now() at time zone 'UTC') FROM (VALUES {values}) AS "__tmp"("id", "stage_id")
    WHERE "crm_lead"."id" = "__tmp"."id" """


def reset(conn):
    conn.execute('TRUNCATE crm_lead, crm_realtime.journal RESTART IDENTITY')
    conn.execute('VACUUM ANALYZE crm_lead')
    conn.execute('VACUUM ANALYZE crm_realtime.journal')


def single(conn, n):
    conn.autocommit = False
    start = time.perf_counter()
    for _ in range(n):
        (lead,) = conn.execute(INSERT).fetchone()
        conn.execute(FLUSH_ONE, [lead])
        conn.commit()
    elapsed = time.perf_counter() - start
    conn.autocommit = True
    return elapsed


def batch(conn, n):
    conn.autocommit = False
    start = time.perf_counter()
    leads = [conn.execute(INSERT).fetchone()[0] for _ in range(n)]
    conn.execute(FLUSH_BATCH.format(values=', '.join(f'({lead}, 1)' for lead in leads)))
    conn.commit()
    elapsed = time.perf_counter() - start
    conn.autocommit = True
    return elapsed


def journal_rows(conn):
    return conn.execute('SELECT count(*) FROM crm_realtime.journal').fetchone()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--single', type=int, default=1000)
    parser.add_argument('--batch', type=int, default=5000)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--pg', default='postgresql://postgres@127.0.0.1:5432/postgres')
    args = parser.parse_args()
    name = f'bench_lead_fold_{uuid.uuid4().hex[:8]}'
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rsplit('/', 1)[0] + '/' + name
    figures = {(mode, work): [] for mode in ('fold', 'capture alone') for work in ('single', 'batch')}
    rows = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ODOO_SCHEMA)
            with conn.cursor() as cur:
                schema.install(cur)
            utc = schema._utc_columns(conn.cursor(), schema.LEAD_TABLE)
            conn.execute("SET synchronous_commit = off")
            for _ in range(args.rounds):
                for mode in ('fold', 'capture alone'):
                    conn.execute(schema.lead_at_commit_sql(utc) if mode == 'fold'
                                 else schema.lead_at_commit_drop_sql())
                    reset(conn)
                    figures[mode, 'single'].append(single(conn, args.single) / args.single)
                    rows[mode, 'single'] = journal_rows(conn) / args.single
                    reset(conn)
                    figures[mode, 'batch'].append(batch(conn, args.batch))
                    rows[mode, 'batch'] = journal_rows(conn) / args.batch
    finally:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f'lead creations, medians of {args.rounds} rounds (synchronous_commit=off)')
    print(f'{"":16}{"single: µs/lead":>18}{"batch: ms total":>18}{"batch: µs/lead":>17}{"journal rows/lead":>19}')
    for mode in ('fold', 'capture alone'):
        s = statistics.median(figures[mode, 'single']) * 1e6
        b = statistics.median(figures[mode, 'batch'])
        print(f'{mode:16}{s:18.1f}{b * 1e3:18.1f}{b / args.batch * 1e6:17.1f}'
              f'{rows[mode, "single"]:10.1f} / {rows[mode, "batch"]:.1f}')


if __name__ == '__main__':
    main()
