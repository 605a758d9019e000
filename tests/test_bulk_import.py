"""A multi-row INSERT (a CSV import) is journaled as one compact row per organization.

At or above ``crm_realtime.bulk_min_rows`` rows (default 100) the INSERT
statement trigger writes only the new rows' keys (op 'created_many'); the
sidecar builds their payloads when it reads the row, through
``crm_realtime.expand()``. These tests hold it to what the per-row journal
promised: the same payloads, every row once and in order, recovery from an
offset inside a compact row (on this sidecar or another replica), slow
consumers, grants, schema changes and uninstall.
"""
import asyncio
import json

import psycopg
import pytest
from tornado.httpclient import AsyncHTTPClient

from sidecar.position import Position
from sidecar.recovery import Hold
from sidecar.sqlfiles import sql_text

from conftest import make_token

pytestmark = pytest.mark.usefixtures('io_loop')

IMPORT = ("INSERT INTO prospects (organization_id, firstname, lastname, email, status, notes, created_at) "
          "SELECT %s, 'imp' || i, 'Ort', 'imp' || i || '@example.com', 'new', repeat('n', %s), "
          "'2026-01-02 03:04:05+00' "
          "FROM generate_series(1, %s) AS i")


def _ops(database):
    return database.execute('SELECT op, organization_id, count(*) FROM crm_realtime.journal '
                            'GROUP BY 1, 2 ORDER BY 1, 2')


def _expanded(database, org=None):
    """Every compact row's (journal id, part, payload), as the sidecar reads them."""
    return database.execute(
        'SELECT j.id, x.part, x.data FROM crm_realtime.journal AS j, '
        'crm_realtime.expand(j.organization_id, j.data) AS x '
        "WHERE j.op = 'created_many' AND (%s::text IS NULL OR j.organization_id = %s::text) "
        'ORDER BY j.id, x.part', [org, org])


# --------------------------------------------------------------------------- the SQL side

def test_small_statements_keep_one_row_per_change_and_large_ones_one_row_per_organization(database):
    database.execute(IMPORT, [1, 10, 99])
    assert _ops(database) == [('created', '1', 99)]
    database.execute('TRUNCATE crm_realtime.journal')
    database.execute("INSERT INTO prospects (organization_id, firstname) "
                     "SELECT 1 + i % 3, 'x' || i FROM generate_series(1, 150) AS i")
    assert _ops(database) == [('created_many', '1', 1), ('created_many', '2', 1), ('created_many', '3', 1)]
    # uuid keys as the hex of their bytes, 32 digits each
    sizes = database.execute("SELECT length(data->>'uuids') / 32, (data->>'table')::oid::regclass::text "
                             'FROM crm_realtime.journal ORDER BY organization_id')
    assert sizes == [(50, 'prospects')] * 3


@pytest.mark.parametrize('key_type, values', [('bigint', 'i * 7'), ('text', "'k,\"' || i || '} x'"),
                                              ('integer', 'i')])
def test_keys_of_other_types_are_stored_and_found_again(database, key_type, values):
    database.execute(f'CREATE TABLE leads (id {key_type} PRIMARY KEY, company integer, name text)')
    database.execute("SELECT crm_realtime.watch('leads', 'prospect', 'company', "
                     "p_fields => '{\"firstname\": \"name\", \"lastname\": null, \"email\": null, "
                     "\"phone\": null, \"status\": null, \"source\": null, \"notes\": null, "
                     "\"created_at\": null, \"updated_at\": null}')")
    database.execute(f"INSERT INTO leads SELECT {values}, 1, 'n' || i FROM generate_series(1, 120) AS i")
    rows = _expanded(database)
    assert [d['firstname'] for _, _, d in rows] == [f'n{i}' for i in range(1, 121)]
    expected = [str(v) for (v,) in database.execute(f'SELECT {values} FROM generate_series(1, 120) AS i')]
    assert [str(d['id']) for _, _, d in rows] == expected


@pytest.mark.parametrize('setting, compact', [('5', True), ('0', False), ('many', True), ('', True),
                                              ('2000', False)])
def test_the_threshold_is_a_setting(database, setting, compact):
    with database.connect() as conn:
        conn.execute("SELECT set_config('crm_realtime.bulk_min_rows', %s, false)", [setting])
        conn.execute(IMPORT, [1, 10, 120])
    ops = {op for op, _, _ in _ops(database)}
    assert ops == ({'created_many'} if compact else {'created'})


def test_expansion_builds_exactly_the_payload_the_per_row_trigger_builds(database):
    """Same statement twice, with and without compact rows: the same payloads, in the same order."""
    database.execute("ALTER TABLE prospects ADD COLUMN seen_at timestamp")   # an unpublished column
    with database.connect() as conn:
        conn.execute("SET crm_realtime.bulk_min_rows = '0'")
        conn.execute(IMPORT + ' ORDER BY i', [7, 40, 150])
    per_row = [d for (d,) in database.execute("SELECT data FROM crm_realtime.journal ORDER BY id")]
    database.execute('TRUNCATE crm_realtime.journal')
    database.execute('DELETE FROM prospects')
    database.execute(IMPORT + ' ORDER BY i', [7, 40, 150])
    compact = [(part, data) for _, part, data in _expanded(database)]
    assert [p for p, _ in compact] == list(range(1, 151))
    strip = [{k: v for k, v in d.items() if k not in ('id', 'updated_at')} for d in per_row]
    assert [{k: v for k, v in d.items() if k not in ('id', 'updated_at')} for _, d in compact] == strip
    assert set(compact[0][1]) == set(per_row[0]) and compact[0][1]['created_at'] == '2026-01-02T03:04:05+00:00'
    assert [d['firstname'] for _, d in compact] == [f'imp{i}' for i in range(1, 151)]


def test_a_row_deleted_or_moved_before_the_read_is_skipped_for_that_organization(database):
    with database.connect() as conn:
        conn.execute(IMPORT, [1, 10, 100])
        conn.execute("DELETE FROM prospects WHERE firstname = 'imp3'")
        conn.execute("UPDATE prospects SET organization_id = 2 WHERE firstname = 'imp5'")
        conn.execute("UPDATE prospects SET status = 'won' WHERE firstname = 'imp7'")
    rows = _expanded(database, '1')
    names = [d['firstname'] for _, _, d in rows]
    assert 'imp3' not in names and 'imp5' not in names and len(names) == 98
    assert [p for _, p, _ in rows][:4] == [1, 2, 4, 6]      # parts keep their place in the row
    assert next(d for _, _, d in rows if d['firstname'] == 'imp7')['status'] == 'won'
    # and the journal says the rest: deleted for 1 (twice), created for 2, updated for 1
    later = database.execute("SELECT op, organization_id FROM crm_realtime.journal "
                             "WHERE op <> 'created_many' ORDER BY id")
    assert later == [('deleted', '1'), ('deleted', '1'), ('created', '2'), ('updated', '1')]


def test_expand_is_granted_only_to_journal_readers(database):
    """PUBLIC cannot call it (it hands out rows' published fields); re-running install.sql
    grants it to the roles that read the journal, as step 4 of sql/README.md does."""
    reader, other = f'rt_reader_{database.name[-8:]}', f'rt_other_{database.name[-8:]}'
    for role in (reader, other):
        database.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        database.execute(f'GRANT USAGE ON SCHEMA crm_realtime TO "{reader}", "{other}"')
        database.execute(f'GRANT SELECT ON crm_realtime.journal TO "{reader}"')
        database.execute(sql_text('install.sql'))
        database.execute(IMPORT, [1, 10, 100])
        with database.connect() as conn:
            conn.execute(f'SET ROLE "{reader}"')
            assert conn.execute("SELECT count(*) FROM crm_realtime.journal j, "
                                "crm_realtime.expand(j.organization_id, j.data) x").fetchone() == (100,)
        with database.connect() as conn:
            conn.execute(f'SET ROLE "{other}"')
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match='function expand'):
                conn.execute("SELECT * FROM crm_realtime.expand('1', '{}')")
    finally:
        for role in (reader, other):
            database.execute(f'DROP OWNED BY "{role}" CASCADE')
            database.execute(f'DROP ROLE "{role}"')


def test_schema_changes_never_fail_an_import_and_expansion_follows_the_trigger_rules(database):
    """Without the event trigger (a non-superuser install, or before repair()): renamed,
    retyped and dropped columns; imports still succeed and expansion publishes what the
    trigger function would (a stale name as null), until repair() follows the rename."""
    database.execute('ALTER EVENT TRIGGER crm_realtime_ddl DISABLE')
    database.execute('ALTER TABLE prospects RENAME COLUMN firstname TO given_name')
    database.execute('ALTER TABLE prospects RENAME COLUMN organization_id TO org')
    database.execute("INSERT INTO prospects (org, given_name, email) "
                     "SELECT 1, 'g' || i, 'e' FROM generate_series(1, 100) AS i")
    # the organization column is stale: nothing of the table is published (as per row)
    assert _ops(database) == []
    database.execute('SELECT * FROM crm_realtime.repair()')
    database.execute('ALTER TABLE prospects RENAME COLUMN id TO pk')       # the key, stale again
    database.execute('ALTER TABLE prospects ALTER COLUMN lastname TYPE varchar(40)')
    database.execute('ALTER TABLE prospects DROP COLUMN email')
    database.execute("INSERT INTO prospects (org, given_name, lastname) "
                     "SELECT 1, 'h' || i, 'L' FROM generate_series(1, 100) AS i")
    rows = _expanded(database)
    assert len(rows) == 100      # the keys were taken by the key column's attribute number
    first = rows[0][2]
    # as the stale trigger function publishes them: id under its old name is gone
    assert first['id'] is None and first['firstname'] == 'h1' and first['email'] is None
    assert first['lastname'] == 'L'
    database.execute('SELECT * FROM crm_realtime.repair()')
    rows = _expanded(database)
    assert len(rows) == 100 and rows[0][2]['id'] is not None   # the key was found by its attribute number
    # a key whose type no longer takes the stored keys is compared as text
    database.execute('ALTER TABLE dress_reservations DROP CONSTRAINT dress_reservations_prospect_id_fkey')
    database.execute('ALTER TABLE prospects ALTER COLUMN pk TYPE text')
    assert len(_expanded(database)) == 100


def test_unwatch_and_uninstall_remove_the_expansion_function(database):
    def functions():
        return sorted(n for (n,) in database.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'crm_realtime'::regnamespace "
            "AND proname LIKE 'expand%%'"))
    assert functions() == ['expand', 'expand_prospects']
    database.execute(IMPORT, [1, 10, 100])
    database.execute("SELECT crm_realtime.unwatch('prospects')")
    assert functions() == ['expand']
    assert _expanded(database) == []        # a table no longer watched publishes nothing
    database.execute("SELECT crm_realtime.watch('prospects', 'prospect', 'organization_id')")
    assert functions() == ['expand', 'expand_prospects']
    database.execute(sql_text('uninstall.sql'))
    assert database.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'crm_realtime'") == [(0,)]


# --------------------------------------------------------------------------- positions (pure)

def test_positions_inside_a_compact_row():
    p = Position.decode('10:12:~12:14:~7.3')
    assert p == Position('10:12:', '12:14:', 7, 3) and p.encode() == '10:12:~12:14:~7.3'
    assert p.has(6, None) and p.has(7, 1) and p.has(7, 3) and not p.has(7, 4) and not p.has(8, 1)
    assert not p.has(7, None)           # a plain row 7 is not "part 3 of it"
    whole = Position.decode('10:12:~12:14:~7')
    assert whole.has(7, 5000) and whole.part is None
    for bad in ('10:12:~12:14:~7.', '10:12:~12:14:~7.x', '10:12:.3', '10:12:~12:14:~7.1234567890'):
        assert Position.decode(bad) is None


def test_a_hold_resumes_inside_a_compact_row_and_offsets_name_parts():
    start = Position('5:5:', '5:7:', 3, 2)          # had parts 1 and 2 of row 3
    h = Hold('sid', '1', None, ['org:1'], start, '5:9:')
    rows = [(2, '5', 'prospect', 'created', '1', None, {}, None),
            (3, '6', 'prospect', 'created', '1', None, {'n': 1}, 1),
            (3, '6', 'prospect', 'created', '1', None, {'n': 2}, 2),
            (3, '6', 'prospect', 'created', '1', None, {'n': 3}, 3),
            (3, '6', 'prospect', 'created', '1', None, {'n': 4}, 5),
            (4, '6', 'prospect', 'updated', '1', None, {}, None),
            (5, '8', 'prospect', 'created', '1', None, {'n': 1}, 1),
            (5, '8', 'prospect', 'created', '1', None, {'n': 2}, 2)]
    out = [(c.id, c.part, offset) for c, offset in h.rows(rows)]
    assert out == [(3, 3, '5:5:~5:7:~3.3'), (3, 5, '5:5:~5:7:~3'), (4, None, '5:5:~5:7:~4'),
                   (5, 1, '5:7:~5:9:~5.1'), (5, 2, '5:9:')]


# --------------------------------------------------------------------------- a real sidecar

async def _connected(c, n=1):
    await c.wait_for(lambda x: len(x.of_type('connect')) >= n)
    return c.of_type('connect')[n - 1]


def _created(events):
    return [e[1]['firstname'] for e in events if e[0] == 'prospect:created']


@pytest.mark.gen_test(timeout=120)
async def test_an_import_reaches_a_connected_client_once_in_order_then_later_changes(
        database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    other = await node_clients(sc.url, make_token(2, 21), transports=('websocket',))
    await _connected(c)
    await _connected(other)
    with database.connect(autocommit=False) as conn:
        conn.execute(IMPORT + ' ORDER BY i', [1, 40, 10_000])
        conn.execute("INSERT INTO prospects (organization_id, firstname) "
                     "SELECT 2, 'two' || i FROM generate_series(1, 200) AS i")
        # in the same transaction: deleted, moved away, and changed after the INSERT
        conn.execute("DELETE FROM prospects WHERE firstname = 'imp2'")
        conn.execute("UPDATE prospects SET organization_id = 2 WHERE firstname = 'imp4'")
        conn.execute("UPDATE prospects SET status = 'won' WHERE firstname = 'imp6'")
        conn.commit()
    database.execute("UPDATE prospects SET status = 'lost' WHERE firstname = 'imp8'")
    await c.wait_for(lambda x: len(x.events) >= 10_000, timeout=60)
    await asyncio.sleep(0.5)
    names = _created(c.events)
    assert names == [f'imp{i}' for i in range(1, 10_001) if i not in (2, 4)]
    won = next(e[1] for e in c.events if e[0] == 'prospect:created' and e[1]['firstname'] == 'imp6')
    assert won['status'] == 'won' and len(won['notes']) == 40
    tail = [(e[0], e[1].get('status')) for e in c.events if e[0] != 'prospect:created']
    assert tail == [('prospect:deleted', None), ('prospect:deleted', None), ('prospect:updated', 'won'),
                    ('prospect:updated', 'lost')]
    await other.wait_for(lambda x: len(_created(x.events)) >= 201, timeout=30)
    assert _created(other.events) == [f'two{i}' for i in range(1, 201)] + ['imp4']
    assert len({e[-1] for e in c.events}) == len(c.events)        # every offset distinct


@pytest.mark.gen_test(timeout=180)
async def test_a_slow_client_closed_inside_a_compact_row_recovers_the_rest_once(
        database, make_sidecar, node_clients):
    """10,000 events from one journal row overflow a small backlog limit: the socket is closed
    in the middle of the row; the client comes back with an offset inside the compact row
    and gets exactly the rest, in order."""
    sc = await make_sidecar(database, SIDECAR_MAX_BACKLOG_BYTES=str(300_000))
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _connected(c)
    database.insert_prospect(1, firstname='before')
    await c.wait_events(1)
    await c.send(cmd='pause')
    await asyncio.sleep(0.2)
    database.execute(IMPORT + ' ORDER BY i', [1, 400, 10_000])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while b'crm_realtime_slow_clients_closed_total 1.0' not in \
            (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body:
        assert loop.time() < deadline, 'the backlog never passed the limit'
        await asyncio.sleep(0.1)
    await c.send(cmd='unpause')
    await c.wait_for(lambda x: len(x.of_type('connect')) >= 2 and len(x.events) >= 10_001, timeout=60)
    assert c.of_type('connect')[1]['recovered'] is True
    lines = c.seen()
    second = next(i for i, m in enumerate(lines) if m['type'] == 'connect' and i > 0)
    before_drop = [m for m in lines[:second] if m['type'] == 'event']
    assert 1 < len(before_drop) < 10_001, len(before_drop)      # closed inside the compact row
    offset = before_drop[-1]['args'][-1]
    assert '.' in offset.rsplit('~', 1)[-1], offset
    database.insert_prospect(1, firstname='after')
    await c.wait_for(lambda x: len(x.events) >= 10_002, timeout=20)
    await asyncio.sleep(0.3)
    assert _created(c.events) == ['before'] + [f'imp{i}' for i in range(1, 10_001)] + ['after']


@pytest.mark.gen_test(timeout=120)
async def test_a_client_away_during_an_import_recovers_it_after_a_restart(
        database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
    await _connected(c)
    database.insert_prospect(1, firstname='before')
    await c.wait_events(1)
    await c.send(cmd='hold')
    await c.wait_for(lambda x: x.of_type('disconnect'))
    await sc.stop()
    database.execute(IMPORT + ' ORDER BY i', [1, 10, 500])
    database.execute("UPDATE prospects SET status = 'won' WHERE firstname = 'imp10'")
    restarted = await make_sidecar(database)
    await c.send(cmd='resume', url=restarted.url)
    assert (await _connected(c, 2))['recovered'] is True
    await c.wait_for(lambda x: len(x.events) >= 502, timeout=30)
    await asyncio.sleep(0.3)
    assert _created(c.events) == ['before'] + [f'imp{i}' for i in range(1, 501)]
    assert [(e[0], e[1]['status']) for e in c.events[-1:]] == [('prospect:updated', 'won')]
    assert len(c.events) == 502
