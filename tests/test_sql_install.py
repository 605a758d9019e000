"""What the DBA installs: idempotent install, clean uninstall, other table shapes."""
import subprocess
import time

import psycopg
import pytest

from sidecar.events import FIELDS_BY_KIND
from sidecar.sqlfiles import sql_text

from conftest import ROOT, make_token

pytestmark = pytest.mark.usefixtures('io_loop')


def _psql(db, path):
    """Run a file exactly as the README tells a DBA to."""
    info = psycopg.conninfo.conninfo_to_dict(db.conninfo)
    cmd = ['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', info['dbname'], '-f', str(path)]
    if info.get('host'):
        cmd += ['-h', info['host']]
    if info.get('port'):
        cmd += ['-p', str(info['port'])]
    cmd += ['-U', info.get('user', 'postgres')]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _host_snapshot(db):
    """Everything of the host's we promise not to touch: tables, columns, triggers, rows."""
    return {
        'columns': db.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                              "WHERE table_schema = 'public' ORDER BY 1, 2"),
        'triggers': db.execute("SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
                               "WHERE NOT tgisinternal ORDER BY 1, 2"),
        'functions': db.execute("SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
                                "ON n.oid = p.pronamespace WHERE n.nspname NOT IN "
                                "('pg_catalog', 'information_schema') ORDER BY 1"),
        'schemas': db.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' "
                              "AND nspname <> 'information_schema' ORDER BY 1"),
        'prospects': db.execute('SELECT * FROM prospects ORDER BY id'),
        'notifications': db.execute('SELECT * FROM notifications ORDER BY id'),
        'reservations': db.execute('SELECT * FROM dress_reservations ORDER BY id'),
    }


def test_install_twice_then_uninstall_leaves_host_as_it_was(empty_database):
    db = empty_database
    db.execute(sql_text('examples/reference_crm.sql'))
    db.execute("INSERT INTO organizations VALUES (1, 'o')")
    pid = db.insert_prospect(1, notes='kept')
    db.execute("INSERT INTO dress_reservations (prospect_id, dress_code) VALUES (%s, 'D1')", [pid])
    db.execute("INSERT INTO notifications (organization_id, type) VALUES (1, 'x')")
    before = _host_snapshot(db)

    for _ in range(2):
        result = _psql(db, ROOT / 'sql' / 'install.sql')
        assert result.returncode == 0, result.stderr
    assert db.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'prospects'::regclass "
                      "AND NOT tgisinternal AND tgname LIKE 'crm_realtime%' ORDER BY 1") == [('crm_realtime_capture',),
                                                            ('crm_realtime_capture_delete',),
                                                            ('crm_realtime_capture_update',)]
    (stamp,), = db.execute('SELECT updated_at FROM prospects')
    db.execute("UPDATE prospects SET firstname = 'during'")
    assert db.execute('SELECT op FROM crm_realtime.journal') == [('updated',)]
    db.execute("UPDATE prospects SET firstname = 'Ada', updated_at = %s", [stamp])

    for _ in range(2):
        result = _psql(db, ROOT / 'sql' / 'uninstall.sql')
        assert result.returncode == 0, result.stderr
    after = _host_snapshot(db)
    assert after == before


def test_install_is_one_transaction(empty_database):
    """A failure half-way leaves nothing behind (here: PostgreSQL refuses a bad watch)."""
    db = empty_database
    db.execute('CREATE TABLE prospects (id int primary key)')   # lacks the org column
    result = _psql(db, ROOT / 'sql' / 'install.sql')
    assert result.returncode != 0
    assert 'has no column organization_id' in result.stderr
    assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm_realtime'") == [(0,)]


def test_install_files_open_with_a_header():
    for name in ('install.sql', 'uninstall.sql'):
        head = sql_text(name).splitlines()[:4]
        assert head[0].startswith('-- crm-realtime:'), name
        assert 'sql/uninstall.sql' in sql_text('install.sql').split('BEGIN;')[0]


def test_sql_field_lists_match_the_event_core(database):
    for kind, fields in FIELDS_BY_KIND.items():
        assert database.execute('SELECT crm_realtime.event_fields(%s)', [kind])[0][0] == list(fields)


def test_watch_rejects_unknown_columns_and_fields(database):
    with pytest.raises(psycopg.errors.RaiseException, match='has no column nope'):
        database.execute("SELECT crm_realtime.watch('prospects', 'prospect', 'nope')")
    with pytest.raises(psycopg.errors.RaiseException, match='not a mappable prospect field'):
        database.execute("""SELECT crm_realtime.watch('prospects', 'prospect', 'organization_id',
                            p_fields => '{"color": "status"}')""")
    with pytest.raises(psycopg.errors.RaiseException, match='not one of prospect, notification'):
        database.execute("SELECT crm_realtime.watch('prospects', 'lead', 'organization_id')")


def test_crm_role_needs_no_rights_on_our_schema_and_cannot_forge(database):
    database.execute('CREATE ROLE crm_app_test LOGIN')
    try:
        database.execute('GRANT ALL ON prospects TO crm_app_test')
        with database.connect() as conn:
            conn.execute('SET ROLE crm_app_test')
            conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'by app')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO crm_realtime.journal (kind, op, organization_id, data) "
                             "VALUES ('prospect', 'created', '2', '{}')")
        assert database.execute('SELECT count(*) FROM crm_realtime.journal') == [(1,)]
    finally:
        database.execute('DROP OWNED BY crm_app_test')
        database.execute('DROP ROLE crm_app_test')


ODOO_LIKE = """
CREATE TABLE res_company (id serial PRIMARY KEY, name text);
CREATE TABLE crm_lead (
    id           serial PRIMARY KEY,
    company_id   integer REFERENCES res_company,
    contact_name text, partner_name text, email_from text, phone text,
    stage        text, description text, color integer,
    create_date  timestamp, write_date timestamp
);
"""


@pytest.mark.gen_test(timeout=60)
async def test_watch_a_differently_shaped_table(database, make_sidecar, clients):
    database.execute(ODOO_LIKE)
    database.execute("INSERT INTO res_company VALUES (1, 'c1'), (2, 'c2')")
    database.execute("""SELECT crm_realtime.watch('crm_lead', 'prospect', 'company_id', 'id', '{
        "firstname": "contact_name", "lastname": "partner_name", "email": "email_from",
        "status": "stage", "source": null, "notes": "description",
        "created_at": "create_date", "updated_at": "write_date"}')""")
    sc = await make_sidecar(database)
    c1 = await clients(sc.url, make_token(1, 11))
    c2 = await clients(sc.url, make_token(2, 21))
    lead_id = database.execute("INSERT INTO crm_lead (company_id, contact_name, email_from, stage, "
                               "create_date, write_date) VALUES (1, 'Jo', 'jo@x.example', 'New', "
                               "now(), now()) RETURNING id")[0][0]
    database.execute('UPDATE crm_lead SET color = 3 WHERE id = %s', [lead_id])   # not published
    database.execute("UPDATE crm_lead SET stage = 'Won' WHERE id = %s", [lead_id])
    database.execute('UPDATE crm_lead SET company_id = 2 WHERE id = %s', [lead_id])
    await c1.wait_events(3)
    await c2.wait_events(1)
    assert [e[0] for e in c1.events] == ['prospect:created', 'prospect:updated', 'prospect:deleted']
    created = c1.events[0][1]
    assert created['id'] == str(lead_id)          # integer keys become strings
    assert created['firstname'] == 'Jo' and created['email'] == 'jo@x.example'
    assert created['source'] is None and created['phone'] is None
    # naive timestamps (Odoo stores UTC) are published with an offset
    assert created['created_at'][-6] in '+-' and created['updated_at'][-6] in '+-'
    assert c1.events[1][1]['status'] == 'Won'
    assert c2.events[0][0] == 'prospect:created' and c2.events[0][1]['status'] == 'Won'
    # a second install upgrades the generated function but keeps the DBA's mapping
    database.execute(sql_text('install.sql'))
    fields = database.execute("SELECT fields FROM crm_realtime.watched_table "
                              "WHERE relation = 'crm_lead'::regclass")[0][0]
    assert fields['email'] == 'email_from' and fields['source'] is None


def test_unwatch_removes_trigger_and_function(database):
    database.execute("SELECT crm_realtime.unwatch('prospects')")
    assert database.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'prospects'::regclass "
                            "AND NOT tgisinternal AND tgname LIKE 'crm_realtime%'") == [(0,)]
    assert database.execute("SELECT to_regproc('crm_realtime.capture_prospects')") == [(None,)]
    database.insert_prospect(1)
    assert database.execute('SELECT count(*) FROM crm_realtime.journal') == [(0,)]


def test_prune_records_its_watermark(database):
    database.insert_prospect(1)
    database.insert_prospect(1)
    assert database.execute("SELECT crm_realtime.prune('1 hour')") == [(0,)]
    assert database.execute("SELECT crm_realtime.prune('0 seconds')") == [(2,)]
    pruned_below, current = database.execute(
        'SELECT pruned_below::text::bigint, pg_current_xact_id()::text::bigint '
        'FROM crm_realtime.journal_state')[0]
    assert 0 < pruned_below <= current


def test_a_multi_row_insert_is_journaled_per_row_in_order(database):
    """INSERTs fire once per statement over a transition table: every row once, in
    the statement's order; rows without an organization are skipped; ON CONFLICT
    DO UPDATE journals its updates too."""
    database.execute('ALTER TABLE prospects ALTER COLUMN organization_id DROP NOT NULL')
    database.execute("INSERT INTO prospects (organization_id, firstname, email) "
                     "SELECT CASE WHEN i = 3 THEN NULL ELSE 1 END, 'p' || i, 'p' || i || '@x.example' "
                     "FROM generate_series(1, 5) AS i ORDER BY i")
    rows = database.execute("SELECT op, data->>'firstname' FROM crm_realtime.journal ORDER BY id")
    assert rows == [('created', 'p1'), ('created', 'p2'), ('created', 'p4'), ('created', 'p5')]
    database.execute('CREATE UNIQUE INDEX ON prospects (email)')
    database.execute("INSERT INTO prospects (organization_id, firstname, email) VALUES "
                     "(1, 'new', 'n@x.example'), (1, 'p1 again', 'p1@x.example') "
                     "ON CONFLICT (email) DO UPDATE SET firstname = excluded.firstname")
    rows = database.execute("SELECT op, data->>'firstname' FROM crm_realtime.journal ORDER BY id")[4:]
    assert sorted(rows) == [('created', 'new'), ('updated', 'p1 again')]
    database.execute("INSERT INTO prospects (organization_id, firstname) SELECT 1, 'none' WHERE false")
    assert database.execute('SELECT count(*) FROM crm_realtime.journal') == [(6,)]


def test_an_inheritance_child_and_a_partition_are_captured(database):
    database.execute('CREATE TABLE vip_prospects (tier int) INHERITS (prospects)')
    database.execute('CREATE TABLE events (id int, organization_id int, type text, created_at timestamptz) '
                     'PARTITION BY RANGE (id)')
    database.execute('CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (1000)')
    database.execute("SELECT crm_realtime.watch('vip_prospects', 'prospect', 'organization_id')")
    database.execute("""SELECT crm_realtime.watch('events_1', 'notification', 'organization_id',
                        p_fields => '{"title": null, "message": null, "meta": null}')""")
    database.execute("INSERT INTO vip_prospects (organization_id, firstname) VALUES (1, 'v1'), (1, 'v2')")
    database.execute("INSERT INTO events VALUES (1, 1, 'e1', now()), (2, 1, 'e2', now())")
    assert database.execute("SELECT coalesce(data->>'firstname', data->>'type') FROM crm_realtime.journal "
                            "ORDER BY id") == [('v1',), ('v2',), ('e1',), ('e2',)]
    assert database.execute("SELECT bool_and(crm_realtime._triggers_current(relation, kind)) "
                            "FROM crm_realtime.watched_table") == [(True,)]
    assert database.execute("SELECT count(*) FROM crm_realtime.mapping_status WHERE state <> 'ok'") == [(0,)]


def test_a_row_moved_to_another_partition_is_deleted_for_one_organization_and_created_for_the_other(database):
    """An UPDATE that moves a row to another partition is a DELETE plus an INSERT for
    PostgreSQL: no UPDATE trigger fires, nor the parent's statement-level INSERT trigger.
    The new organization must still be told."""
    database.execute('CREATE TABLE pp (id uuid DEFAULT gen_random_uuid(), organization_id int, firstname text, '
                     'status text, PRIMARY KEY (id, organization_id)) PARTITION BY LIST (organization_id)')
    database.execute('CREATE TABLE pp1 PARTITION OF pp FOR VALUES IN (1)')
    database.execute('CREATE TABLE pp2 PARTITION OF pp FOR VALUES IN (2)')
    fields = ('{"lastname": null, "email": null, "phone": null, "source": null, "notes": null, '
              '"created_at": null, "updated_at": null}')
    # as an install of the version before made it: a statement-level INSERT trigger.
    # mapping_status says so (install.sql leaves it when the table is busy), and
    # repair() or running install.sql again brings the row-level one
    database.execute("SELECT crm_realtime.watch('pp', 'prospect', 'organization_id', p_fields => %s)", [fields])
    old_trigger = ('CREATE OR REPLACE TRIGGER crm_realtime_capture AFTER INSERT ON pp REFERENCING NEW TABLE AS '
                   'crm_realtime_new FOR EACH STATEMENT EXECUTE FUNCTION crm_realtime.' + database.execute(
                       "SELECT function_name FROM crm_realtime.watched_table WHERE relation = 'pp'::regclass")[0][0]
                   + '()')
    database.execute(old_trigger)
    (state, detail), = database.execute("SELECT state, detail FROM crm_realtime.mapping_status WHERE state <> 'ok'")
    assert state == 'triggers stale' and 'moved between its partitions' in detail, detail
    assert [r[0] for r in database.execute('SELECT * FROM crm_realtime.repair()')] == [
        'pp: capture triggers of an older version replaced']
    assert database.execute("SELECT count(*) FROM crm_realtime.mapping_status WHERE state <> 'ok'") == [(0,)]
    database.execute(old_trigger)
    database.execute(sql_text('install.sql'))
    assert database.execute("SELECT crm_realtime._triggers_current('pp', 'prospect')") == [(True,)]
    start = database.execute('SELECT coalesce(max(id), 0) FROM crm_realtime.journal')[0][0]
    key = '22222222-2222-2222-2222-222222222222'
    database.execute("INSERT INTO pp (id, organization_id, firstname) VALUES (%s, 1, 'Moved')", [key])
    database.execute('UPDATE pp SET organization_id = 2 WHERE id = %s', [key])
    database.execute("UPDATE pp SET status = 'won' WHERE id = %s", [key])
    database.execute("INSERT INTO pp (organization_id, firstname) SELECT 1, 'imp' || i FROM generate_series(1, 3) AS i")
    rows = database.execute("SELECT op, organization_id, data->>'id', data->>'firstname' FROM crm_realtime.journal "
                            "WHERE id > %s ORDER BY id", [start])
    assert rows[:4] == [('created', '1', key, 'Moved'), ('deleted', '1', key, None),
                        ('created', '2', key, 'Moved'), ('updated', '2', key, 'Moved')]
    assert [(op, org, name) for op, org, _, name in rows[4:]] == [('created', '1', f'imp{i}') for i in (1, 2, 3)]
    # lean capture applies to the row-level INSERT too: keys, and an insert then
    # update in one transaction is one row
    database.execute("SELECT crm_realtime.lean('pp')")
    start = database.execute('SELECT coalesce(max(id), 0) FROM crm_realtime.journal')[0][0]
    with database.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO pp (id, organization_id, firstname) VALUES (%s, 1, 'Lean')", [key.replace('2', '3')])
        conn.execute("UPDATE pp SET status = 'contacted' WHERE id = %s", [key.replace('2', '3')])
        conn.commit()
    rows = database.execute("SELECT op, organization_id, data FROM crm_realtime.journal WHERE id > %s ORDER BY id",
                            [start])
    assert [(op, org) for op, org, _ in rows] == [('created_many', '1')]
    assert rows[0][2]['uuids'] == key.replace('2', '3').replace('-', '')


def _readme_sidecar_grants(role: str) -> str:
    """Step 4 of sql/README.md, as written there, for ``role``."""
    import re
    text = (ROOT / 'sql' / 'README.md').read_text()
    block = re.search(r'4\. Give the sidecar a role.*?```sql\n(.*?)```', text, re.S).group(1)
    return block.replace("CREATE ROLE crm_realtime LOGIN PASSWORD '...';", '').replace(
        'TO crm_realtime', f'TO "{role}"')


def test_the_readme_sidecar_role_reads_and_prunes_but_cannot_forge(database):
    import uuid
    role, bystander = f'crm_rt_sidecar_{uuid.uuid4().hex[:8]}', f'crm_rt_other_{uuid.uuid4().hex[:8]}'
    database.execute(f'CREATE ROLE "{role}" LOGIN')
    database.execute(f'CREATE ROLE "{bystander}" LOGIN')
    try:
        database.execute(_readme_sidecar_grants(role))
        database.execute(f'GRANT USAGE ON SCHEMA crm_realtime TO "{bystander}"')
        database.insert_prospect(1)
        with database.connect() as conn:
            conn.execute(f'SET ROLE "{role}"')
            assert conn.execute('SELECT count(*) FROM crm_realtime.journal').fetchone()[0] == 1
            # compact rows of a multi-row INSERT are expanded through crm_realtime.expand()
            assert conn.execute("SELECT count(*) FROM crm_realtime.expand('1', "
                                "'{\"table\": 0, \"keys\": \"{}\"}')").fetchone()[0] == 0
            conn.execute("SELECT crm_realtime.prune('24 hours')")
            for forge in ("INSERT INTO crm_realtime.journal (kind, op, organization_id, data) "
                          "VALUES ('notification', 'created', '2', '{}')",
                          "UPDATE crm_realtime.watched_table SET kind = kind",
                          "UPDATE crm_realtime.journal_state SET pruned_below = pruned_below"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(forge)
        with database.connect() as conn:
            conn.execute(f'SET ROLE "{bystander}"')      # USAGE alone: prune is not PUBLIC
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT crm_realtime.prune('0')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):     # nor expand
                conn.execute("SELECT * FROM crm_realtime.expand('1', '{}')")
        assert database.execute('SELECT count(*) FROM crm_realtime.journal') == [(1,)]
    finally:
        for r in (role, bystander):
            database.execute(f'DROP OWNED BY "{r}"')
            database.execute(f'DROP ROLE "{r}"')


def test_reinstall_replaces_an_update_trigger_with_a_when_clause(database):
    """Versions before this one had WHEN (OLD *<> NEW) on the UPDATE trigger, which
    PostgreSQL re-prepares for every UPDATE statement; install.sql drops it."""
    database.execute('DROP TRIGGER crm_realtime_capture_update ON prospects')
    database.execute('CREATE TRIGGER crm_realtime_capture_update AFTER UPDATE ON prospects FOR EACH ROW '
                     'WHEN (OLD *<> NEW) EXECUTE FUNCTION crm_realtime.capture_prospects()')
    assert database.execute("SELECT crm_realtime._triggers_current('prospects', 'prospect')") == [(False,)]
    database.execute(sql_text('install.sql'))
    assert database.execute("SELECT tgqual IS NULL FROM pg_trigger WHERE tgrelid = 'prospects'::regclass "
                            "AND tgname = 'crm_realtime_capture_update'") == [(True,)]
    assert database.execute("SELECT crm_realtime._triggers_current('prospects', 'prospect')") == [(True,)]
    pid = database.insert_prospect(1)
    database.execute('UPDATE prospects SET firstname = firstname WHERE id = %s', [pid])
    database.execute("UPDATE prospects SET firstname = 'Grace' WHERE id = %s", [pid])
    assert database.execute('SELECT op FROM crm_realtime.journal ORDER BY id') == [('created',), ('updated',)]


def test_reinstall_while_a_crm_write_is_in_flight_drops_the_old_brin_index_later(database):
    """Versions before this one had a BRIN index on the journal, which cost every journal
    row. install.sql drops it, but waits at most 200 ms for the journal: with a CRM
    transaction holding it, the re-run completes and says so, and the next run drops it."""
    import threading
    database.execute('CREATE INDEX journal_recorded_at_brin ON crm_realtime.journal USING brin (recorded_at)')
    writer = database.connect(autocommit=False)
    writer.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'in flight')")
    notices, done = [], threading.Event()

    def reinstall():
        with database.connect() as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            conn.execute("SET statement_timeout = '30s'")
            conn.execute(sql_text('install.sql'))
        done.set()

    t = threading.Thread(target=reinstall, daemon=True)
    started = time.monotonic()
    t.start()
    try:
        assert done.wait(20), 'install.sql waited for the CRM transaction'
    finally:
        writer.commit()
        writer.close()
    t.join(5)
    assert time.monotonic() - started < 10
    assert any('journal_recorded_at_brin stays' in n for n in notices), notices
    assert database.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'journal_recorded_at_brin'") == [(1,)]
    database.execute(sql_text('install.sql'))
    assert database.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'journal_recorded_at_brin'") == [(0,)]
    assert database.execute("SELECT data->>'firstname' FROM crm_realtime.journal") == [('in flight',)]


def _old_version_state(database):
    """What an install of 96f2199 left: the UPDATE trigger's WHEN clause, the BRIN index."""
    database.execute('CREATE INDEX journal_recorded_at_brin ON crm_realtime.journal USING brin (recorded_at)')
    database.execute('DROP TRIGGER crm_realtime_capture_update ON prospects')
    database.execute('CREATE TRIGGER crm_realtime_capture_update AFTER UPDATE ON prospects FOR EACH ROW '
                     'WHEN (OLD *<> NEW) EXECUTE FUNCTION crm_realtime.capture_prospects()')


def _reinstall_in_thread(database):
    import threading
    result = {'notices': [], 'error': None}

    def run():
        try:
            with database.connect() as conn:
                conn.add_notice_handler(lambda d: result['notices'].append(d.message_primary))
                conn.execute("SET statement_timeout = '30s'")
                conn.execute(sql_text('install.sql'))
        except Exception as exc:  # noqa: BLE001
            result['error'] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def test_upgrade_with_crm_transactions_in_flight_never_deadlocks_nor_stalls_them(database):
    """Upgrading from the previous version while the CRM writes: a transaction that
    wrote a notification (so holds the journal) and then updates a prospect, and one
    with a prospect INSERT in flight. install.sql takes each lock only if it comes within
    200 ms, skips what it could not do with a NOTICE, never deadlocks a CRM write, and
    the next quiet run finishes the upgrade."""
    _old_version_state(database)
    pid = database.insert_prospect(1)
    crm = database.connect(autocommit=False)
    crm.execute("SET statement_timeout = '5s'")
    crm.execute("INSERT INTO notifications (organization_id, type, title, message) "
                "VALUES (1, 'info', 't', 'm')")
    other = database.connect(autocommit=False)
    other.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'in flight')")
    started = time.monotonic()
    t, result = _reinstall_in_thread(database)
    t.join(15)
    assert not t.is_alive(), 'install.sql waited for the CRM'
    assert result['error'] is None, result['error']
    assert time.monotonic() - started < 10
    other.commit()
    crm.execute("UPDATE prospects SET firstname = 'after' WHERE id = %s", [pid])   # no deadlock
    crm.commit()
    crm.close()
    other.close()
    notices = ' '.join(result['notices'])
    assert 'journal_recorded_at_brin stays' in notices and 'triggers of an older version stay' in notices
    assert database.execute('SELECT op FROM crm_realtime.journal ORDER BY id')[-2:] == [('created',), ('updated',)]

    database.execute(sql_text('install.sql'))      # nobody in flight now
    assert database.execute("SELECT crm_realtime._triggers_current('prospects', 'prospect')") == [(True,)]
    assert database.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'journal_recorded_at_brin'") == [(0,)]


def test_a_cast_of_a_table_owner_never_runs_with_the_superuser_installers_rights(database):
    """Our SECURITY DEFINER functions turn column values into JSON or text, which calls
    any cast the owner of a column's type defined. Installed by a superuser, they run as
    role crm_realtime_definer (journal rows and the watched tables only): the owner of a
    watched table cannot have its cast run as the superuser (found in review)."""
    owner = f'crm_rt_owner_{database.name[-8:]}'
    database.execute(f'CREATE ROLE "{owner}" LOGIN')
    try:
        database.execute(f'GRANT CREATE ON SCHEMA public TO "{owner}"')
        with database.connect() as conn:
            conn.execute(f'SET ROLE "{owner}"')
            conn.execute("CREATE TYPE orgcode AS ENUM ('acme')")
            # what runs: who am I, and am I a superuser
            conn.execute("CREATE FUNCTION org_json(orgcode) RETURNS json LANGUAGE sql AS "
                         "$$ SELECT to_json(current_user || ':' || (SELECT rolsuper FROM pg_roles "
                         "WHERE rolname = current_user)::text) $$")
            conn.execute('CREATE CAST (orgcode AS json) WITH FUNCTION org_json(orgcode)')
            conn.execute('CREATE TABLE leads (id int PRIMARY KEY, org orgcode, firstname text, lastname text, '
                         'email text, phone text, status text, source text, notes text, '
                         'created_at timestamptz, updated_at timestamptz)')
        database.execute("SELECT crm_realtime.watch('leads', 'prospect', 'org')")
        with database.connect() as conn:
            conn.execute(f'SET ROLE "{owner}"')
            conn.execute("INSERT INTO leads (id, org, firstname) VALUES (1, 'acme', 'Ada')")
            conn.execute("UPDATE leads SET firstname = 'Grace'")
        orgs = [r[0] for r in database.execute('SELECT DISTINCT organization_id FROM crm_realtime.journal')]
        assert orgs == ['crm_realtime_definer:false'], orgs
    finally:
        database.execute('DROP TABLE IF EXISTS leads')
        database.execute('DROP CAST IF EXISTS (orgcode AS json)')
        database.execute(f'DROP OWNED BY "{owner}" CASCADE')
        database.execute(f'DROP ROLE "{owner}"')


def test_uninstall_takes_the_definer_roles_rights_here_and_leaves_the_role(database):
    """The role belongs to the cluster (another database may be installing with it right
    now): uninstall.sql revokes what it holds in this database and leaves it."""
    assert database.execute("SELECT proowner::regrole::text FROM pg_proc "
                            "WHERE proname = 'capture_prospects'") == [('crm_realtime_definer',)]
    assert database.execute("SELECT has_table_privilege('crm_realtime_definer', 'prospects', 'SELECT')") == [(True,)]
    database.execute(sql_text('uninstall.sql'))
    assert database.execute("SELECT has_table_privilege('crm_realtime_definer', 'prospects', 'SELECT')") == [(False,)]
    assert database.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'crm_realtime_definer'") == [(1,)]
    database.execute(sql_text('install.sql'))
    pid = database.insert_prospect(1)
    assert database.execute("SELECT count(*) FROM crm_realtime.journal WHERE data->>'id' = %s", [pid]) == [(1,)]
