"""Lean capture (crm_realtime.lean()): the journal holds keys, the sidecar reads the payloads.

In the journal (SQL), then end to end with a real sidecar and clients: every event
still arrives once and in order with a whole payload, also when the row is gone by
the time the sidecar reads its lean rows, and on recovery.
"""
import json

import psycopg
import pytest

from sidecar.events import PROSPECT_FIELDS, Change, fill_gone, _lean_key

from conftest import make_token

pytestmark = pytest.mark.usefixtures('io_loop')


def _journal(database, after=0):
    return database.execute('SELECT id, op, organization_id, data FROM crm_realtime.journal '
                            'WHERE id > %s ORDER BY id', [after])


def _last_id(database):
    return database.execute('SELECT coalesce(max(id), 0) FROM crm_realtime.journal')[0][0]


def test_lean_rows_hold_keys_and_an_insert_then_update_in_one_transaction_is_one_row(database):
    database.execute("SELECT crm_realtime.lean('prospects')")
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        pid = str(conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'Ada') "
                               "RETURNING id").fetchone()[0])
        conn.execute("UPDATE prospects SET status = 'contacted' WHERE id = %s", [pid])
        conn.commit()
    rows = _journal(database, start)
    assert [(op, org) for _, op, org, _ in rows] == [('created_many', '1')]
    assert _lean_key(rows[0][3]) == pid
    # an UPDATE in a transaction of its own: one lean row; an unpublished column: none
    start = _last_id(database)
    database.execute("UPDATE prospects SET status = 'won' WHERE id = %s", [pid])
    database.execute('UPDATE prospects SET internal_score = 9 WHERE id = %s', [pid])
    rows = _journal(database, start)
    assert [op for _, op, _, _ in rows] == ['updated_many'] and _lean_key(rows[0][3]) == pid
    # the payload, read as the sidecar reads it: the row as it is now
    expanded = database.execute('SELECT e.part, e.data FROM crm_realtime.expand(%s, %s::jsonb) AS e',
                                ['1', json.dumps(rows[0][3])])
    assert expanded[0][0] == 1 and expanded[0][1]['status'] == 'won' and expanded[0][1]['firstname'] == 'Ada'
    # a deleted row carries the last state the lean rows before it are built from
    start = _last_id(database)
    database.execute('DELETE FROM prospects WHERE id = %s', [pid])
    (_, op, _, data), = _journal(database, start)
    assert op == 'deleted' and data['id'] == pid and data['last']['status'] == 'won'


def test_an_insert_in_another_transaction_is_not_folded_and_lean_can_be_turned_off(database):
    database.execute("SELECT crm_realtime.lean('prospects')")
    pid = database.insert_prospect(1)
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        # another row inserted first in this transaction must not hide pid's update
        conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'Other')")
        conn.execute("UPDATE prospects SET status = 'lost' WHERE id = %s", [pid])
        conn.commit()
    assert [op for _, op, _, _ in _journal(database, start)] == ['created_many', 'updated_many']
    # watch() again keeps the mode; lean(false) brings payload rows back
    database.execute("SELECT crm_realtime.watch('public.prospects', 'prospect', 'organization_id')")
    assert database.execute("SELECT lean FROM crm_realtime.watched_table "
                            "WHERE relation = 'public.prospects'::regclass") == [(True,)]
    database.execute("SELECT crm_realtime.lean('prospects', false)")
    start = _last_id(database)
    database.insert_prospect(1, firstname='Payload')
    (_, op, _, data), = _journal(database, start)
    assert op == 'created' and data['firstname'] == 'Payload'


def test_lean_is_refused_for_a_notification_source_and_an_unwatched_table(database):
    with pytest.raises(psycopg.errors.RaiseException, match='notification source'):
        database.execute("SELECT crm_realtime.lean('notifications')")
    database.execute('CREATE TABLE other (id int PRIMARY KEY)')
    with pytest.raises(psycopg.errors.RaiseException, match='is not watched'):
        database.execute("SELECT crm_realtime.lean('other')")


def test_lean_keys_of_every_form():
    assert _lean_key({'table': 1, 'uuids': '8E8B3B8EFB2C4FF9950562F72C36D29B'}) == \
        '8e8b3b8e-fb2c-4ff9-9505-62f72c36d29b'
    assert _lean_key('{"table": 1, "keys": "{42}"}') == '42'
    assert _lean_key({'keys': '{"a,\\"b\\\\c"}'}) == 'a,"b\\c'
    assert _lean_key({'ids': ['x']}) == 'x'
    # more than one key (a compact row of an import) is not a lean row's
    assert _lean_key({'uuids': 'ab' * 32}) is None
    assert _lean_key({'keys': '{1,2}'}) is None
    assert _lean_key({'keys': '{"a","b"}'}) is None
    assert _lean_key('not json') is None


def test_fill_gone_builds_a_gone_rows_events_from_the_deleted_row_that_follows():
    last = {'id': 7, 'status': 'won'}
    rows = [Change(1, 'prospect', 'created_many', '1', None, '{"table": 1, "keys": "{7}"}'),
            Change(2, 'prospect', 'updated_many', '1', None, '{"table": 1, "keys": "{7}"}'),
            Change(3, 'prospect', 'created_many', '2', None, '{"table": 1, "keys": "{7}"}'),
            Change(4, 'prospect', 'deleted', '1', None, json.dumps({'id': 7, 'last': last}))]
    out = fill_gone(rows, 1, 2, 3, 5, 7)
    assert [(c.op, c.part) for c in out] == [('created', 1), ('updated', 1), ('created_many', None),
                                             ('deleted', None)]
    assert out[0].data == last and out[1].data == last
    # a deleted row before the lean row is not its end; nothing lean: the same list back
    assert fill_gone([rows[3], rows[0]], 1, 2, 3, 5, 7)[1].op == 'created_many'
    plain = [Change(5, 'prospect', 'created', '1', None, '{}')]
    assert fill_gone(plain, 1, 2, 3, 5, 7) is plain


@pytest.mark.gen_test(timeout=60)
async def test_lean_events_arrive_whole_once_and_in_order_even_when_the_row_is_gone(database, make_sidecar,
                                                                                     clients):
    database.execute("SELECT crm_realtime.lean('prospects')")
    sc = await make_sidecar(database)
    alice = await clients(sc.url, make_token(1, 11))
    other = await clients(sc.url, make_token(2, 21))

    pid = database.insert_prospect(1, firstname='Camille', notes='hello')
    database.execute("UPDATE prospects SET status = 'contacted' WHERE id = %s", [pid])
    database.execute('DELETE FROM prospects WHERE id = %s', [pid])
    # created, updated and deleted in one transaction: the update is folded into the created
    with database.connect(autocommit=False) as conn:
        gone = str(conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'Brief') "
                                "RETURNING id").fetchone()[0])
        conn.execute("UPDATE prospects SET status = 'seen' WHERE id = %s", [gone])
        conn.execute('DELETE FROM prospects WHERE id = %s', [gone])
        conn.commit()
    kept = database.insert_prospect(1, firstname='Kept')
    database.insert_prospect(2, firstname='Marker')

    events = await alice.wait_events(6)
    assert [(e[0], e[1]['id']) for e in events] == [
        ('prospect:created', pid), ('prospect:updated', pid), ('prospect:deleted', pid),
        ('prospect:created', gone), ('prospect:deleted', gone), ('prospect:created', kept)]
    created, updated = events[0][1], events[1][1]
    assert list(created) == list(PROSPECT_FIELDS) and set(updated) == set(PROSPECT_FIELDS)
    assert created['firstname'] == 'Camille' and created['notes'] == 'hello'
    assert updated['status'] == 'contacted'
    assert events[3][1]['status'] == 'seen' and events[3][1]['firstname'] == 'Brief'
    assert events[2][1] == {'id': pid}
    await other.wait_events(1)
    assert [(e[0], e[1]['firstname']) for e in other.events] == [('prospect:created', 'Marker')]


def test_a_session_cannot_hide_its_updates_by_setting_the_folding_key_itself(database):
    # crm_realtime.inserted is an ordinary setting: a CRM role can set it. The fold must
    # only happen for a row this transaction's INSERT journaled, never on the setting alone.
    database.execute("SELECT crm_realtime.lean('prospects')")
    pid = database.insert_prospect(1)
    oid, hexed = database.execute(
        "SELECT 'public.prospects'::regclass::oid, encode(uuid_send(%s::uuid), 'hex')", [pid])[0]
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        conn.execute(f"SET LOCAL crm_realtime.inserted = '{oid}:{hexed}'")
        conn.execute("UPDATE prospects SET status = 'hidden?' WHERE id = %s", [pid])
        conn.commit()
    assert [op for _, op, _, _ in _journal(database, start)] == ['updated_many']
    # nor by pointing the setting at another row after a real INSERT: the fold needs
    # the transaction's last journal row to be the created row of the updated key
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'Decoy')")
        conn.execute(f"SET LOCAL crm_realtime.inserted = '{oid}:{hexed}'")
        conn.execute("UPDATE prospects SET status = 'hidden again?' WHERE id = %s", [pid])
        conn.commit()
    rows = _journal(database, start)
    assert [op for _, op, _, _ in rows] == ['created_many', 'updated_many'] and _lean_key(rows[1][3]) == pid


def test_the_fold_is_one_index_probe_of_the_transactions_last_row_whatever_the_journal_holds(database):
    database.execute("SELECT crm_realtime.lean('prospects')")
    # the lean function plans with enable_seqscan off, so its probe (in the real
    # function, as the statistics of this transaction count it) stays an index scan
    # whatever the planner estimates: here on a small journal, and with random reads
    # priced so high that it would otherwise scan it
    with database.connect(autocommit=False) as conn:
        conn.execute('SET LOCAL random_page_cost = 100000')
        pid = str(conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (2, 'Probe') "
                               "RETURNING id").fetchone()[0])
        conn.execute("UPDATE prospects SET status = 'contacted' WHERE id = %s", [pid])
        scans = conn.execute("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
                             "WHERE relid = 'crm_realtime.journal'::regclass").fetchone()
        conn.commit()
    assert scans == (0, 1), scans
    # many create-then-writes in one transaction: every one folds
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        for i in range(150):
            pid = str(conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (2, %s) "
                                   "RETURNING id", [f'Many{i}']).fetchone()[0])
            conn.execute("UPDATE prospects SET status = 'contacted' WHERE id = %s", [pid])
        conn.commit()
    assert [op for _, op, _, _ in _journal(database, start)] == ['created_many'] * 150
    # something journaled in between (a notification): the UPDATE journals its own row
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        pid = str(conn.execute("INSERT INTO prospects (organization_id, firstname) VALUES (2, 'Between') "
                               "RETURNING id").fetchone()[0])
        conn.execute("INSERT INTO notifications (organization_id, type, title) VALUES (2, 'info', 'hi')")
        conn.execute("UPDATE prospects SET status = 'contacted' WHERE id = %s", [pid])
        conn.commit()
    rows = _journal(database, start)
    assert [op for _, op, _, _ in rows] == ['created_many', 'created', 'updated_many']
    assert _lean_key(rows[2][3]) == pid


def _expand_one(database, org, pid, table=None):
    hexed = database.execute("SELECT encode(uuid_send(%s::uuid), 'hex')", [pid])[0][0]
    table = table or database.execute("SELECT 'public.prospects'::regclass::oid")[0][0]
    data = {'table': table, 'uuids': hexed}
    return database.execute('SELECT e.part, e.data FROM crm_realtime.expand(%s, %s::jsonb) AS e',
                            [str(org), json.dumps(data)])


def _plans(conn):
    """Log the plans of every statement this connection runs, nested ones too, as notices."""
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ''))
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.Error as exc:
        pytest.skip(f'auto_explain is not available on this server: {exc}')
    conn.execute('SET auto_explain.log_min_duration = 0')
    conn.execute('SET auto_explain.log_nested_statements = on')
    conn.execute("SET auto_explain.log_level = 'notice'")
    return notices


def test_one_key_is_read_by_a_planned_query_with_the_general_paths_payload(database):
    # a lean row's key (or a one-row import's) is read by a query written into the
    # table's expansion function: the payload of the general path (several keys)
    database.execute("SELECT crm_realtime.lean('prospects')")
    pid = database.insert_prospect(1, firstname='Grace', notes='n' * 50)
    fn = database.execute("SELECT crm_realtime._expand_name(function_name) FROM crm_realtime.watched_table "
                          "WHERE relation = 'public.prospects'::regclass")[0][0]
    general = database.execute(f'SELECT part, data FROM crm_realtime."{fn}"(%s, %s)',
                               ['1', [pid, '00000000-0000-0000-0000-000000000000']])
    with database.connect() as conn:
        notices = _plans(conn)
        hexed = conn.execute("SELECT encode(uuid_send(%s::uuid), 'hex')", [pid]).fetchone()[0]
        data = json.dumps({'table': conn.execute("SELECT 'public.prospects'::regclass::oid").fetchone()[0],
                           'uuids': hexed})
        notices.clear()
        one = conn.execute('SELECT e.part, e.data FROM crm_realtime.expand(%s, %s::jsonb) AS e',
                           ['1', data]).fetchall()
    # the planned query answered, and the general path (unnest of the keys) never ran
    assert any('p_ids[1]' in n for n in notices) and not any('unnest' in n for n in notices), notices
    assert one == general and one[0][1]['firstname'] == 'Grace' and one[0][1]['notes'] == 'n' * 50
    assert _expand_one(database, 2, pid) == []           # another organization: nothing


def test_the_one_key_query_never_reads_a_relation_that_took_the_watched_tables_name(database):
    # Renamed with nobody to follow (no event trigger here; ALTER SCHEMA ... RENAME has
    # none either), and a view put under the old name, whose columns run code as the
    # function's owner and which even offers a tableoid column: never read.
    database.execute("SELECT crm_realtime.lean('prospects')")
    pid = database.insert_prospect(1, firstname='Grace')
    table = database.execute("SELECT 'public.prospects'::regclass::oid")[0][0]
    database.execute('ALTER EVENT TRIGGER crm_realtime_ddl DISABLE')
    database.execute('ALTER TABLE prospects RENAME TO prospects_before')
    database.execute("CREATE FUNCTION public.impostor() RETURNS oid LANGUAGE plpgsql AS $$ BEGIN "
                     "RAISE NOTICE 'impostor ran as %', current_user; RETURN " + str(table) + "; END $$")
    database.execute("CREATE VIEW public.prospects AS SELECT id, organization_id, 'SPOOFED'::text AS firstname, "
                     "lastname, email, phone, status, source, notes, created_at, updated_at, "
                     "public.impostor() AS tableoid FROM prospects_before")
    database.execute('GRANT SELECT ON public.prospects TO PUBLIC')
    with database.connect() as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ''))
        hexed = conn.execute("SELECT encode(uuid_send(%s::uuid), 'hex')", [pid]).fetchone()[0]
        (_, data), = conn.execute('SELECT e.part, e.data FROM crm_realtime.expand(%s, %s::jsonb) AS e',
                                  ['1', json.dumps({'table': table, 'uuids': hexed})]).fetchall()
    assert data['firstname'] == 'Grace' and not any('impostor' in n for n in notices), notices
    # a column renamed since the function was written: the general path answers, as
    # the trigger publishes (the stale field as null)
    database.execute('ALTER TABLE prospects_before RENAME COLUMN firstname TO given_name')
    (_, data), = _expand_one(database, 1, pid, table)
    assert data['firstname'] is None


def test_a_key_type_outside_pg_catalog_is_never_taken_from_the_callers_temporary_schema(database):
    # expand() runs as its owner with search_path pg_catalog, pg_temp, and pg_temp is
    # the caller's: a key type written unqualified (a domain here) could be the caller's
    # own temporary domain, whose CHECK runs the caller's code as the function's owner
    database.execute('CREATE DOMAIN public.pid AS bigint')
    database.execute('CREATE TABLE leads (id public.pid PRIMARY KEY, company integer, name text)')
    database.execute("SELECT crm_realtime.watch('leads', 'prospect', 'company', "
                     "p_fields => '{\"firstname\": \"name\", \"lastname\": null, \"email\": null, "
                     "\"phone\": null, \"status\": null, \"source\": null, \"notes\": null, "
                     "\"created_at\": null, \"updated_at\": null}')")
    database.execute("SELECT crm_realtime.lean('leads')")
    database.execute("INSERT INTO leads VALUES (7, 1, 'Lin')")
    table = database.execute("SELECT 'public.leads'::regclass::oid")[0][0]
    with database.connect() as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ''))
        conn.execute("CREATE FUNCTION pg_temp.evil(bigint) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
                     "RAISE NOTICE 'evil ran as %', current_user; RETURN true; END $$")
        conn.execute('CREATE DOMAIN pg_temp.pid AS bigint CHECK (pg_temp.evil(VALUE))')
        rows = conn.execute('SELECT e.part, e.data FROM crm_realtime.expand(%s, %s::jsonb) AS e',
                            ['1', json.dumps({'table': table, 'keys': '{7}'})]).fetchall()
    assert [d['firstname'] for _, d in rows] == ['Lin']
    assert not any('evil' in n for n in notices), notices


def test_a_decoy_in_another_organization_cannot_fold_an_update(database):
    # A key unique only per organization: inserting the same key in another
    # organization, then updating this organization's row in the same transaction,
    # must not fold (hide) that update.
    database.execute('CREATE TABLE pp (id uuid, organization_id int, firstname text, status text, '
                     'PRIMARY KEY (id, organization_id))')
    database.execute("SELECT crm_realtime.watch('pp', 'prospect', 'organization_id', "
                     "p_fields => '{\"lastname\": null, \"email\": null, \"phone\": null, "
                     "\"source\": null, \"notes\": null, \"created_at\": null, \"updated_at\": null}')")
    database.execute("SELECT crm_realtime.lean('pp')")
    key = '55555555-5555-5555-5555-555555555555'
    database.execute('INSERT INTO pp VALUES (%s, 1, %s, %s)', [key, 'Real', 'new'])
    start = _last_id(database)
    with database.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO pp VALUES (%s, 2, 'Decoy', 'new')", [key])
        conn.execute("UPDATE pp SET status = 'hidden?' WHERE organization_id = 1")
        conn.execute('DELETE FROM pp WHERE organization_id = 2')
        conn.commit()
    assert [(op, org) for _, op, org, _ in _journal(database, start)] == [
        ('created_many', '2'), ('updated_many', '1'), ('deleted', '2')]
