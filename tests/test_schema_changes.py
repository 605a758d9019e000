"""The CRM migrates its schema while it keeps writing: our triggers never block the
DDL, never fail a write, and capture follows (or degrades to null, loudly)."""
import asyncio
import json
import threading
import time

import psycopg
import pytest

from sidecar.sqlfiles import sql_text

from conftest import ROOT, make_token
from test_sql_install import ODOO_LIKE, _psql

pytestmark = pytest.mark.usefixtures('io_loop')


class Writer(threading.Thread):
    """The CRM: inserts a row and updates it, again and again, through ``table``
    (a name that stays valid: the rename-table step leaves a view behind)."""

    def __init__(self, database, table, org_column, text_column):
        super().__init__(daemon=True)
        self.conn = database.connect()
        self.table, self.org, self.text = table, org_column, text_column
        self.done = 0                    # completed insert+update pairs
        self.errors = []
        self._halt = threading.Event()

    def run(self):
        insert = (f'INSERT INTO {self.table} ({self.org}, {self.text}) VALUES (1, %s) '
                  f'RETURNING {"id"}')
        update = f'UPDATE {self.table} SET {self.text} = %s WHERE id = %s'
        while not self._halt.is_set():
            n = self.done
            try:
                row_id = self.conn.execute(insert, [f'w{n}']).fetchone()[0]
                self.conn.execute(update, [f'w{n}u', row_id])
                self.done += 1
            except psycopg.Error as exc:     # a failed CRM write: exactly what must not happen
                self.errors.append(f'{exc.__class__.__name__}: {exc}')
                self.done += 1
            time.sleep(0.004)

    async def wait_more(self, n=15, timeout=10):
        target = self.done + n
        deadline = time.time() + timeout
        while self.done < target and time.time() < deadline:
            await asyncio.sleep(0.02)
        assert self.done >= target, 'the writer stalled'

    def stop(self):
        self._halt.set()
        self.join(10)
        self.conn.close()


def _ddl(database, *statements):
    """One migration step, in one transaction, as a CRM's migration tool would run it."""
    with database.connect(autocommit=False) as conn:
        conn.execute("SET lock_timeout = '10s'")
        for sql in statements:
            conn.execute(sql)
        conn.commit()


async def _migrate_while_writing(database, sc, client, table, org, text_field, text_column, steps):
    """Run ``steps`` [(label, [sql...], check(payload) or None)] while a writer writes.

    After each step the writer writes more; the first event written after the
    step is given to ``check``. In the end every write has produced exactly its
    two events, in order, and no write failed.
    """
    writer = Writer(database, table, org, text_column)
    writer.start()
    try:
        await writer.wait_more()
        marks = []
        for label, statements, check in steps:
            _ddl(database, *statements)
            marks.append((label, writer.done, check))
            await writer.wait_more()
    finally:
        writer.stop()
    assert writer.errors == [], writer.errors[:3]
    total = writer.done
    await client.wait_events(2 * total, timeout=30)
    await asyncio.sleep(1.2)     # anything duplicated would arrive by now (check interval 1 s)
    texts = [(e[0], e[1][text_field]) for e in client.events]
    expected = []
    for n in range(total):
        expected += [('prospect:created', f'w{n}'), ('prospect:updated', f'w{n}u')]
    assert texts == expected
    by_text = {e[1][text_field]: e[1] for e in client.events}
    for label, done_before, check in marks:
        if check is not None:
            payload = by_text[f'w{done_before + 1}']
            assert check(payload), (label, payload)
    return total


def _nothing_of_ours_left(database):
    assert database.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm_realtime'") == [(0,)]
    assert database.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'crm_realtime%'") == [(0,)]
    assert database.execute("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'crm_realtime%'") == [(0,)]
    assert database.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                            "WHERE n.nspname = 'crm_realtime'") == [(0,)]


@pytest.mark.gen_test(timeout=120)
async def test_prospects_migrations_under_writes(database, make_sidecar, clients):
    database.execute("ALTER TABLE prospects ALTER COLUMN firstname SET DEFAULT 'Ada', "
                     "ALTER COLUMN phone SET DEFAULT '+33 1 00', ALTER COLUMN status SET DEFAULT 'new'")
    sc = await make_sidecar(database)
    sc.listener.mapping_check_seconds = 0.2
    c = await clients(sc.url, make_token(1, 11))
    steps = [
        ('add column', ['ALTER TABLE prospects ADD COLUMN rating integer DEFAULT 3'],
         lambda p: p['firstname'] == 'Ada' and p['phone'] == '+33 1 00'),
        # followed: the event trigger renames the mapping in the same transaction
        ('rename column', ['ALTER TABLE prospects RENAME COLUMN firstname TO first_name'],
         lambda p: p['firstname'] == 'Ada'),
        # PostgreSQL used to refuse this: "cannot alter type of a column used in a trigger definition"
        ('alter type', ['ALTER TABLE prospects ALTER COLUMN status TYPE varchar(40)',
                        'ALTER TABLE prospects ALTER COLUMN created_at TYPE timestamp'],
         lambda p: p['status'] == 'new' and p['created_at'].endswith('+00:00')),
        # degraded: published as null
        ('drop column', ['ALTER TABLE prospects DROP COLUMN phone'],
         lambda p: p['phone'] is None and p['firstname'] == 'Ada'),
        ('rename table', ['ALTER TABLE prospects RENAME TO leads',
                          'CREATE VIEW prospects AS SELECT * FROM leads'],
         lambda p: p['firstname'] == 'Ada'),
    ]
    await _migrate_while_writing(database, sc, c, 'prospects', 'organization_id', 'notes', 'notes', steps)

    status = dict(((t, f), s) for t, f, s in database.execute(
        'SELECT "table", "field", "state" FROM crm_realtime.mapping_status'))
    assert status[('leads', 'phone')] == 'missing'
    assert status[('leads', 'firstname')] == 'ok'
    assert database.execute("SELECT fields->>'firstname' FROM crm_realtime.watched_table "
                            "WHERE relation = 'leads'::regclass") == [('first_name',)]
    # the sidecar says so: its readiness detail, log and metric (it re-reads the
    # status every 0.2 s here, at its next loop turn: within the 1 s idle check)
    problem = ('leads.phone no longer exists: field phone is published as null '
               '(map it again with crm_realtime.watch())')
    for _ in range(100):
        if sc.listener.mapping_problems == [problem]:
            break
        await asyncio.sleep(0.05)
    assert sc.listener.mapping_problems == [problem]
    from tornado.httpclient import AsyncHTTPClient
    ready = await AsyncHTTPClient().fetch(sc.url + '/readyz')
    assert json.loads(ready.body) == {'status': 'ready', 'warnings': [problem]}
    metrics = (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body.decode()
    assert 'crm_realtime_mapping_problems 1.0' in metrics

    database.execute('DROP VIEW prospects')
    result = _psql(database, ROOT / 'sql' / 'uninstall.sql')
    assert result.returncode == 0, result.stderr
    _nothing_of_ours_left(database)
    database.execute("INSERT INTO leads (organization_id) VALUES (1)")   # the CRM goes on


@pytest.mark.gen_test(timeout=120)
async def test_crm_lead_migrations_under_writes(database, make_sidecar, clients):
    database.execute(ODOO_LIKE)
    database.execute("INSERT INTO res_company VALUES (1, 'c1')")
    database.execute("ALTER TABLE crm_lead ALTER COLUMN contact_name SET DEFAULT 'Jo', "
                     "ALTER COLUMN phone SET DEFAULT '+1 555', ALTER COLUMN stage SET DEFAULT 'New', "
                     "ALTER COLUMN write_date SET DEFAULT now() AT TIME ZONE 'UTC'")
    database.execute("""SELECT crm_realtime.watch('crm_lead', 'prospect', 'company_id', 'id', '{
        "firstname": "contact_name", "lastname": "partner_name", "email": "email_from",
        "status": "stage", "source": null, "notes": "description",
        "created_at": "create_date", "updated_at": "write_date"}')""")
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    steps = [
        ('add column', ['ALTER TABLE crm_lead ADD COLUMN probability numeric'],
         lambda p: p['firstname'] == 'Jo' and p['phone'] == '+1 555'),
        ('rename column', ['ALTER TABLE crm_lead RENAME COLUMN contact_name TO contact_full_name'],
         lambda p: p['firstname'] == 'Jo'),
        ('alter type', ['ALTER TABLE crm_lead ALTER COLUMN stage TYPE varchar(64)',
                        'ALTER TABLE crm_lead ALTER COLUMN company_id TYPE bigint',
                        "ALTER TABLE crm_lead ALTER COLUMN write_date TYPE timestamptz USING write_date AT TIME ZONE 'UTC'"],
         lambda p: p['status'] == 'New' and p['updated_at'][-6] in '+-'),
        ('drop column', ['ALTER TABLE crm_lead DROP COLUMN phone'],
         lambda p: p['phone'] is None and p['firstname'] == 'Jo'),
        ('rename table', ['ALTER TABLE crm_lead RENAME TO crm_lead_v2',
                          'CREATE VIEW crm_lead AS SELECT * FROM crm_lead_v2'],
         lambda p: p['firstname'] == 'Jo' and p['id'].isdigit()),
    ]
    await _migrate_while_writing(database, sc, c, 'crm_lead', 'company_id', 'notes', 'description', steps)

    assert database.execute("SELECT count(*) FROM crm_realtime.mapping_status WHERE state <> 'ok'") == [(1,)]
    database.execute('DROP VIEW crm_lead')
    result = _psql(database, ROOT / 'sql' / 'uninstall.sql')
    assert result.returncode == 0, result.stderr
    _nothing_of_ours_left(database)


INSERT_HOPPER = ("INSERT INTO prospects (organization_id, firstname, last_name, email) "
                 "VALUES (1, 'Grace', 'Hopper', 'ada@example.com')")


def test_without_the_event_trigger_writes_still_succeed_and_repair_follows(database):
    """A non-superuser install has no event trigger: writes never fail; the mapping
    says what is wrong; crm_realtime.repair() follows the rename."""
    database.execute('DROP EVENT TRIGGER crm_realtime_ddl')
    database.execute('ALTER TABLE prospects RENAME COLUMN lastname TO last_name')
    database.execute('ALTER TABLE prospects ALTER COLUMN email TYPE varchar(200)')
    database.execute('ALTER TABLE prospects ALTER COLUMN updated_at TYPE timestamp')
    database.execute(INSERT_HOPPER)
    (data,) = database.execute("SELECT data FROM crm_realtime.journal ORDER BY id DESC LIMIT 1")[0]
    assert data['lastname'] is None and data['email'] == 'ada@example.com'
    problems = database.execute('SELECT "field", "state", "detail" FROM crm_realtime.mapping_status '
                                "WHERE state <> 'ok' ORDER BY 1")
    assert [(f, s) for f, s, _ in problems] == [('lastname', 'renamed'), ('updated_at', 'stale')]
    assert 'run SELECT * FROM crm_realtime.repair()' in problems[0][2]

    lines = [r[0] for r in database.execute('SELECT * FROM crm_realtime.repair()')]
    assert lines == ['prospects: column lastname was renamed to last_name; field lastname follows it']
    assert database.execute("SELECT count(*) FROM crm_realtime.mapping_status WHERE state <> 'ok'") == [(0,)]
    database.execute(INSERT_HOPPER)
    (data,) = database.execute("SELECT data FROM crm_realtime.journal ORDER BY id DESC LIMIT 1")[0]
    assert data['lastname'] == 'Hopper' and data['updated_at'].endswith('+00:00')


def test_a_dropped_watched_table_is_forgotten(database):
    database.execute('DROP TABLE notifications')
    assert database.execute("SELECT relation::text FROM crm_realtime.watched_table") == [('prospects',)]
    assert database.execute("SELECT to_regproc('crm_realtime.capture_notifications')") == [(None,)]


def test_reinstall_after_a_dropped_column_keeps_working(database):
    """install.sql run again (an upgrade) must not refuse a mapping whose column went away."""
    database.execute('ALTER TABLE prospects DROP COLUMN source')
    database.execute(sql_text('install.sql'))
    database.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'Ada')")
    (data,) = database.execute("SELECT data FROM crm_realtime.journal ORDER BY id DESC LIMIT 1")[0]
    assert data['source'] is None and data['firstname'] == 'Ada'


def test_a_notification_whose_user_column_went_away_is_not_broadcast(database):
    database.execute('ALTER TABLE notifications DROP COLUMN user_id')
    database.execute("INSERT INTO notifications (organization_id, type) VALUES (1, 'private')")
    assert database.execute("SELECT count(*) FROM crm_realtime.journal WHERE kind = 'notification'") == [(0,)]
    assert database.execute("SELECT state FROM crm_realtime.mapping_status WHERE field = '@user'") == [('missing',)]


def test_a_non_superuser_install_works_without_the_event_trigger(empty_database):
    """The owner of the CRM's tables (not a superuser, like an Odoo database user) can
    install: no event trigger (PostgreSQL reserves them to superusers), a NOTICE
    saying what to run after a migration, and writes that never fail meanwhile."""
    db = empty_database
    role = f'crm_rt_owner_{db.name[-8:]}'
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.execute(f'GRANT CREATE ON DATABASE "{db.name}" TO "{role}"')
        db.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        with db.connect() as conn:
            conn.execute(f'SET ROLE "{role}"')
            conn.execute(sql_text('examples/reference_crm.sql'))
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary))
            conn.execute(sql_text('install.sql'))
            assert any('not run by a superuser, so no event trigger' in n and
                       'SELECT * FROM crm_realtime.repair()' in n for n in notices), notices
            conn.execute('ALTER TABLE prospects RENAME COLUMN email TO email_address')
            conn.execute("INSERT INTO prospects (organization_id, firstname, email_address) "
                         "VALUES (1, 'Ada', 'a@x.example')")
            assert conn.execute("SELECT data->'email', data->>'firstname' FROM crm_realtime.journal"
                                ).fetchall() == [(None, 'Ada')]
            assert conn.execute("SELECT state FROM crm_realtime.mapping_status WHERE field = 'email'"
                                ).fetchall() == [('renamed',)]
            conn.execute('SELECT * FROM crm_realtime.repair()')
            conn.execute("INSERT INTO prospects (organization_id, firstname, email_address) "
                         "VALUES (1, 'Bob', 'b@x.example')")
            assert conn.execute("SELECT data->>'email' FROM crm_realtime.journal ORDER BY id DESC LIMIT 1"
                                ).fetchall() == [('b@x.example',)]
            conn.execute(sql_text('uninstall.sql'))
        assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm_realtime'") == [(0,)]
    finally:
        db.execute(f'DROP OWNED BY "{role}" CASCADE')
        db.execute(f'DROP ROLE "{role}"')


def _journal_after(database, last_id):
    return database.execute('SELECT op, organization_id, data FROM crm_realtime.journal '
                            'WHERE id > %s ORDER BY id', [last_id])


def _last_id(database):
    return database.execute('SELECT coalesce(max(id), 0) FROM crm_realtime.journal')[0][0]


def test_row_triggers_read_columns_directly_and_publish_what_the_json_path_does(database):
    """UPDATE and DELETE read NEW and OLD directly (no row-to-JSON): the payload is the
    one the INSERT's JSON path publishes, an unpublished-only change emits nothing,
    a move is deleted + created, and a timestamp without time zone keeps its +00:00."""
    pk = database.insert_prospect(1, notes='n' * 50)
    (created,) = [d for op, _, d in _journal_after(database, 0) if op == 'created']
    mark = _last_id(database)
    database.execute("UPDATE prospects SET status = 'won' WHERE id = %s", [pk])
    [(op, org, updated)] = _journal_after(database, mark)
    assert (op, org) == ('updated', '1')
    # the reference CRM's own trigger moves updated_at
    assert updated['updated_at'] > created['updated_at']
    assert {**updated, 'updated_at': None} == {**created, 'status': 'won', 'updated_at': None}

    mark = _last_id(database)
    database.execute('UPDATE prospects SET internal_score = 7 WHERE id = %s', [pk])
    assert _journal_after(database, mark) == []

    database.execute('UPDATE prospects SET organization_id = 2 WHERE id = %s', [pk])
    rows = _journal_after(database, mark)
    assert [(op, org) for op, org, _ in rows] == [('deleted', '1'), ('created', '2')]
    assert rows[0][2] == {'id': pk} and rows[1][2]['status'] == 'won'

    database.execute('ALTER TABLE prospects ALTER COLUMN updated_at TYPE timestamp')
    mark = _last_id(database)
    database.execute("UPDATE prospects SET firstname = 'Grace' WHERE id = %s", [pk])
    [(_, _, data)] = _journal_after(database, mark)
    assert data['firstname'] == 'Grace' and data['updated_at'].endswith('+00:00')

    mark = _last_id(database)
    database.execute('DELETE FROM prospects WHERE id = %s', [pk])
    assert _journal_after(database, mark) == [('deleted', '2', {'id': pk})]


def test_without_the_event_trigger_updates_and_deletes_fall_back_and_never_fail(database):
    """The row triggers' direct column reads were written for the columns of the time;
    after a rename, a drop or a retype that nobody followed (no event trigger), the
    write still succeeds and the event is what the JSON path publishes."""
    database.execute('DROP EVENT TRIGGER crm_realtime_ddl')
    a = database.insert_prospect(1)
    b = database.insert_prospect(1)
    database.execute('ALTER TABLE prospects RENAME COLUMN status TO state')
    database.execute('ALTER TABLE prospects DROP COLUMN phone')
    # a type with no equality operator: the unchanged test must not need one
    database.execute('ALTER TABLE prospects ALTER COLUMN notes TYPE json USING to_json(notes)')
    mark = _last_id(database)
    database.execute("UPDATE prospects SET state = 'won' WHERE id = %s", [a])
    database.execute("""UPDATE prospects SET notes = '{"a": 1}' WHERE id = %s""", [a])
    database.execute('UPDATE prospects SET internal_score = 3 WHERE id = %s', [a])
    rows = _journal_after(database, mark)
    # the renamed status is published as null; the notes change is seen
    assert [(op, org) for op, org, _ in rows] == [('updated', '1'), ('updated', '1')]
    assert rows[0][2]['status'] is None and rows[0][2]['phone'] is None
    assert rows[1][2]['notes'] == {'a': 1}

    mark = _last_id(database)
    database.execute('DELETE FROM prospects WHERE id = %s', [b])
    assert _journal_after(database, mark) == [('deleted', '1', {'id': b})]

    # the organization column renamed: the rows have no organization any more (as on
    # the JSON path), so nothing is journaled, and nothing fails
    database.execute('ALTER TABLE prospects RENAME COLUMN organization_id TO org')
    mark = _last_id(database)
    database.execute("UPDATE prospects SET firstname = 'Grace' WHERE id = %s", [a])
    database.execute('DELETE FROM prospects WHERE id = %s', [a])
    assert _journal_after(database, mark) == []


def _xmins_after(database, mark):
    return database.execute('SELECT count(DISTINCT xmin::text) FROM crm_realtime.journal WHERE id > %s',
                            [mark])[0][0]


def test_insert_reads_columns_directly_or_as_json_with_the_same_payload_and_no_subtransactions(database):
    """The INSERT trigger reads the new rows' columns directly once a query naming them
    prepares; after a rename nobody followed it goes through the rows as JSON. Both
    publish the same payload, and neither takes a subtransaction id per statement (a
    row written inside a subtransaction would carry that subtransaction's id as xmin)."""
    database.execute('DROP EVENT TRIGGER crm_realtime_ddl')
    fields = dict(firstname='Ada', lastname='Lovelace', email='ada@example.com', status='new')

    def insert_100_in_one_transaction():
        with database.connect(autocommit=False) as conn:
            for i in range(100):
                conn.execute('INSERT INTO prospects (organization_id, firstname, lastname, email, status) '
                             'VALUES (1, %s, %s, %s, %s)', list(fields.values()))
            conn.commit()

    def payloads_after(mark):
        return [d for op, _, d in _journal_after(database, mark) if op == 'created']

    mark = _last_id(database)
    insert_100_in_one_transaction()
    direct = payloads_after(mark)
    assert _xmins_after(database, mark) == 1
    assert len(direct) == 100 and direct[0]['lastname'] == 'Lovelace' and direct[0]['email'] == fields['email']

    database.execute('ALTER TABLE prospects RENAME COLUMN lastname TO last_name')
    fields['lastname'] = 'ignored'
    mark = _last_id(database)
    with database.connect(autocommit=False) as conn:
        for i in range(100):
            conn.execute("INSERT INTO prospects (organization_id, firstname, last_name, email, status) "
                         "VALUES (1, 'Ada', 'Lovelace', 'ada@example.com', 'new')")
        conn.commit()
    by_json = payloads_after(mark)
    assert _xmins_after(database, mark) == 1
    assert len(by_json) == 100
    # same payload but the field whose column went away, and the row's own id and times
    strip = ('id', 'created_at', 'updated_at', 'lastname')
    assert {k: v for k, v in by_json[0].items() if k not in strip} == \
        {k: v for k, v in direct[0].items() if k not in strip}
    assert by_json[0]['lastname'] is None and set(by_json[0]) == set(direct[0])


def test_row_triggers_take_no_subtransaction_id_direct_or_in_fallback(database):
    """The row triggers' exception block only reads: 80 rows updated and deleted in one
    transaction, before and after a rename nobody followed, leave journal rows that
    all carry the transaction's own id (xmin)."""
    database.execute("INSERT INTO prospects (organization_id, firstname) SELECT 1, 'r' || i "
                     "FROM generate_series(1, 80) AS i")
    for step in ('direct', 'fallback'):
        if step == 'fallback':
            database.execute('DROP EVENT TRIGGER crm_realtime_ddl')
            database.execute('ALTER TABLE prospects RENAME COLUMN status TO state')
        mark = _last_id(database)
        with database.connect(autocommit=False) as conn:
            conn.execute("UPDATE prospects SET firstname = firstname || %s", [step[0]])
            conn.commit()
        assert database.execute('SELECT count(*) FROM crm_realtime.journal WHERE id > %s', [mark]) == [(80,)]
        assert _xmins_after(database, mark) == 1, step
    mark = _last_id(database)
    database.execute('DELETE FROM prospects')
    assert database.execute('SELECT count(*) FROM crm_realtime.journal WHERE id > %s', [mark]) == [(80,)]
    assert _xmins_after(database, mark) == 1


def test_a_retype_under_a_session_that_already_wrote_never_fails_its_writes(database):
    """PL/pgSQL keeps the plans it prepared for NEW.col with the column's old type: after
    an ALTER COLUMN ... TYPE nobody followed (no event trigger), a pooled CRM connection
    that had written before gets datatype_mismatch there. The block catches it, the JSON
    path publishes, and the write goes through (found in review: 42804 reached the CRM)."""
    database.execute('DROP EVENT TRIGGER crm_realtime_ddl')
    with database.connect() as crm:
        crm.execute("INSERT INTO prospects (organization_id, firstname, phone) VALUES (1, 'a', '1')")
        crm.execute("UPDATE prospects SET firstname = 'a2'")
        crm.execute("DELETE FROM prospects WHERE firstname = 'nobody'")
        database.execute('ALTER TABLE prospects ALTER COLUMN organization_id TYPE bigint')
        database.execute('ALTER TABLE prospects ALTER COLUMN phone TYPE varchar(40)')
        mark = _last_id(database)
        crm.execute("UPDATE prospects SET firstname = 'a3', phone = '2'")
        crm.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'b')")
        crm.execute("DELETE FROM prospects WHERE firstname = 'a3'")
    rows = _journal_after(database, mark)
    assert [(op, org) for op, org, _ in rows] == [('updated', '1'), ('created', '1'), ('deleted', '1')]
    assert rows[0][2]['firstname'] == 'a3' and rows[0][2]['phone'] == '2'


def test_a_char_n_organization_is_one_organization_on_every_path(database):
    """The organization is published as the JSON path spells it (to_jsonb(row)->>org): a
    char(n) keeps its padding on created, updated, deleted and compact rows alike."""
    database.execute('CREATE TABLE leads (id int PRIMARY KEY, org char(8), firstname text, lastname text, '
                     'email text, phone text, status text, source text, notes text, created_at timestamptz, '
                     'updated_at timestamptz, internal_score int)')
    database.execute("SELECT crm_realtime.watch('leads', 'prospect', 'org')")
    database.execute("INSERT INTO leads (id, org, firstname) VALUES (1, 'acme', 'Ada')")
    database.execute("UPDATE leads SET firstname = 'Ada2'")
    database.execute('DELETE FROM leads')
    database.execute("INSERT INTO leads (id, org, firstname) SELECT i, 'acme', 'L' || i "
                     "FROM generate_series(10, 209) AS i")
    orgs = database.execute("SELECT op, organization_id FROM crm_realtime.journal ORDER BY id")
    assert orgs == [('created', 'acme    '), ('updated', 'acme    '), ('deleted', 'acme    '),
                    ('created_many', 'acme    ')]
    # the compact row expands for that organization
    (n,) = database.execute("SELECT count(*) FROM crm_realtime.journal AS j, "
                            "crm_realtime.expand(j.organization_id, j.data) WHERE j.op = 'created_many'")[0]
    assert n == 200


def test_a_column_dropped_then_added_back_is_published_again(database):
    """A mapped column missing when the function was (re)written is still named by it, so
    it is read again once it is back (before that, the JSON path publishes it as null)."""
    database.execute('DROP EVENT TRIGGER crm_realtime_ddl')
    pid = database.insert_prospect(1)
    database.execute('ALTER TABLE prospects DROP COLUMN phone')
    database.execute('SELECT * FROM crm_realtime.repair()')
    mark = _last_id(database)
    database.execute("UPDATE prospects SET firstname = 'Grace' WHERE id = %s", [pid])
    [(_, _, data)] = _journal_after(database, mark)
    assert data['phone'] is None and data['firstname'] == 'Grace'
    database.execute('ALTER TABLE prospects ADD COLUMN phone varchar(30)')
    mark = _last_id(database)
    database.execute("UPDATE prospects SET phone = '777' WHERE id = %s", [pid])
    database.execute("INSERT INTO prospects (organization_id, firstname, phone) VALUES (1, 'New', '888')")
    rows = _journal_after(database, mark)
    assert [(op, d['phone']) for op, _, d in rows] == [('updated', '777'), ('created', '888')]
