"""A new lead reaches the browsers once, complete, however the ORM wrote it.

Odoo's ORM creates a ``crm.lead`` with an INSERT of the values it has, then
computes the stored fields it did not receive (``stage_id`` and ``team_id``,
``compute=..., store=True`` without ``precompute``; ``company_id`` likewise)
and writes them with an UPDATE when it flushes, in the same transaction. These
tests replay that statement sequence on the Odoo-shaped table and check what
the journal (and a real sidecar's client) ends up with.
"""
import pytest

from conftest import SECRET

from .support import config, insert_lead, odoo_db, schema, tokens  # noqa: F401 - odoo_db is a fixture

#: What Odoo 17.0's ORM sends for env['crm.lead'].create({...}) without a stage:
#: the INSERT of the given and default columns ...
ORM_INSERT = """INSERT INTO "crm_lead" ("active", "company_id", "contact_name", "create_date", "create_uid",
    "email_from", "name", "priority", "type", "write_date", "write_uid")
    VALUES (true, %s, %s, (now() at time zone 'UTC'), 2, 'ada@example.com', 'Website inquiry', '0', 'lead',
            (now() at time zone 'UTC'), 2) RETURNING "id" """
#: ... then, at flush, the UPDATE of the computed stored fields (with write_date/write_uid).
ORM_FLUSH = """UPDATE "crm_lead" SET "stage_id" = %s, "team_id" = 1, "write_uid" = 2,
    "write_date" = (now() at time zone 'UTC') WHERE id IN ({ids})"""
#: 18.0 and later flush several records in one statement joined on a VALUES list.
ORM_FLUSH_BATCH = """UPDATE "crm_lead" SET "stage_id" = "__tmp"."stage_id"::int4, "team_id" = 1,
    "write_date" = (now() at time zone 'UTC') FROM (VALUES {values}) AS "__tmp"("id", "stage_id")
    WHERE "crm_lead"."id" = "__tmp"."id" """


def _journal(db):
    return db.execute("SELECT op, organization_id, data FROM crm_realtime.journal ORDER BY id")


def _orm_create(cur, company_id=1, contact='Ada Lovelace', stage_id=2):
    cur.execute(ORM_INSERT, (company_id, contact))
    (lead,) = cur.fetchone()
    cur.execute(ORM_FLUSH.format(ids=int(lead)), (stage_id,))
    return lead


def test_orm_create_then_flush_is_one_created_event_with_the_stage(odoo_db):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            lead = _orm_create(cur, stage_id=2)
            # inside the transaction the generic capture has journaled both statements
            cur.execute("SELECT op, data->>'status' FROM crm_realtime.journal ORDER BY id")
            assert cur.fetchall() == [('created', None), ('updated', '2')]
        conn.commit()
    ((op, org, data),) = _journal(odoo_db)
    assert (op, org, data['id'], data['status'], data['lastname']) == ('created', '1', lead, 2, 'Ada Lovelace')
    row = odoo_db.execute("SELECT to_jsonb(create_date AT TIME ZONE 'UTC'), to_jsonb(write_date AT TIME ZONE 'UTC') "
                          'FROM crm_lead WHERE id = %s', [lead])[0]
    assert [data['created_at'], data['updated_at']] == list(row)


def test_the_fold_rewrites_the_creation_exactly_as_the_capture_would(odoo_db):
    """A lead INSERTed complete: the payload rewritten at commit equals the capture's own."""
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO crm_lead (name, company_id, contact_name, email_from, phone, stage_id, "
                        "source_id, description, create_date, write_date) VALUES ('x', 1, 'Grace Hopper', "
                        "'grace@example.com', '+1 555', 2, 3, '<p>met</p>', now() AT TIME ZONE 'UTC', "
                        "(now() AT TIME ZONE 'UTC') + interval '1 second') RETURNING id")
            (lead,) = cur.fetchone()
            cur.execute('SELECT data FROM crm_realtime.journal')
            ((captured,),) = cur.fetchall()
            # blank it: what is there after commit was written by the fold alone
            cur.execute("UPDATE crm_realtime.journal SET data = jsonb_build_object('id', data->'id')")
        conn.commit()
    ((op, _, folded),) = _journal(odoo_db)
    assert op == 'created' and captured['id'] == lead and captured['status'] == 2
    assert folded == captured


@pytest.mark.parametrize('flush', ['one', 'batch'])
def test_a_batch_of_new_leads_each_arrives_once_with_its_stage(odoo_db, flush):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            leads = []
            for i in range(50):
                cur.execute(ORM_INSERT, (1 + i % 2, f'Lead {i}'))
                leads.append(cur.fetchone()[0])
            if flush == 'one':
                for i, lead in enumerate(leads):
                    cur.execute(ORM_FLUSH.format(ids=int(lead)), (1 + i % 2,))
            else:
                values = ', '.join(f'({lead}, {1 + i % 2})' for i, lead in enumerate(leads))
                cur.execute(ORM_FLUSH_BATCH.format(values=values))
        conn.commit()
    rows = _journal(odoo_db)
    assert [(op, org, data['id'], data['status']) for op, org, data in rows] == [
        ('created', str(1 + i % 2), lead, 1 + i % 2) for i, lead in enumerate(leads)]


@pytest.mark.parametrize('flush', ['one', 'batch'])
def test_a_batch_create_of_many_leads_is_one_compact_row_per_company_and_nothing_else(odoo_db, flush):
    """The ORM's batch create is one multi-row INSERT: from crm_realtime.bulk_min_rows rows on,
    one compact row per company; the sidecar builds each lead as it is at commit (with the
    stage the flush wrote), so the flush's rows are dropped, except for a lead that moved."""
    n = 120
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            rows = ', '.join(f"(true, {1 + i % 2}, 'Lead {i}', now() at time zone 'UTC', 'x', 'lead', "
                             "now() at time zone 'UTC')" for i in range(n))
            cur.execute('INSERT INTO "crm_lead" ("active", "company_id", "contact_name", "create_date", '
                        f'"name", "type", "write_date") VALUES {rows} RETURNING "id"')
            leads = [r[0] for r in cur.fetchall()]
            if flush == 'one':
                for i, lead in enumerate(leads):
                    cur.execute(ORM_FLUSH.format(ids=int(lead)), (1 + i % 2,))
            else:
                values = ', '.join(f'({lead}, {1 + i % 2})' for i, lead in enumerate(leads))
                cur.execute(ORM_FLUSH_BATCH.format(values=values))
            cur.execute('UPDATE crm_lead SET company_id = 2 WHERE id = %s', [leads[0]])    # moved: 1 -> 2
            cur.execute('DELETE FROM crm_lead WHERE id = %s', [leads[2]])                   # gone
        conn.commit()
    rows = _journal(odoo_db)
    assert [(op, org) for op, org, _ in rows[:2]] == [('created_many', '2'), ('created_many', '1')] or \
        [(op, org) for op, org, _ in rows[:2]] == [('created_many', '1'), ('created_many', '2')]
    # only the moved lead keeps its rows: after its creation for 1 (compact, skipped now that
    # it is in 2), its flush, gone from 1, created in 2
    assert [(op, org, data['id']) for op, org, data in rows[2:]] == [
        ('updated', '1', leads[0]), ('deleted', '1', leads[0]), ('created', '2', leads[0])]
    expanded = odoo_db.execute(
        "SELECT j.organization_id, x.data FROM crm_realtime.journal j, "
        "crm_realtime.expand(j.organization_id, j.data) x WHERE j.op = 'created_many' ORDER BY j.organization_id, x.part")
    got = {(org, data['id']): data for org, data in expanded}
    assert len(got) == n - 2 and ('1', leads[0]) not in got and ('1', leads[2]) not in got
    assert all(data['status'] == int(org) for (org, _), data in got.items())      # the stage of the flush


def test_a_company_computed_at_flush_publishes_one_created_for_that_company(odoo_db):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute(ORM_INSERT, (None, 'No company yet'))
            (lead,) = cur.fetchone()
            cur.execute('UPDATE crm_lead SET company_id = 2, stage_id = 1 WHERE id = %s', [lead])
            cur.execute("UPDATE crm_lead SET phone = '+1 555' WHERE id = %s", [lead])
        conn.commit()
    ((op, org, data),) = _journal(odoo_db)
    assert (op, org, data['status'], data['phone']) == ('created', '2', 1, '+1 555')


def test_a_lead_moved_between_companies_before_commit_is_created_once_in_the_last(odoo_db):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            lead = _orm_create(cur, company_id=1)
            cur.execute('UPDATE crm_lead SET company_id = 2 WHERE id = %s', [lead])
        conn.commit()
    assert [(op, org, data['status']) for op, org, data in _journal(odoo_db)] == [('created', '2', 2)]


def test_a_lead_created_and_deleted_in_one_transaction_publishes_nothing(odoo_db):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            lead = _orm_create(cur)
            cur.execute('DELETE FROM crm_lead WHERE id = %s', [lead])
            cur.execute(ORM_INSERT, (None, 'Never got a company'))
        conn.commit()
    assert _journal(odoo_db) == []


def test_existing_leads_changed_alongside_a_new_one_keep_their_events(odoo_db):
    old = insert_lead(odoo_db, 1, contact_name='Old one')
    other = insert_lead(odoo_db, 1, contact_name='Other')
    odoo_db.execute('DELETE FROM crm_realtime.journal')
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("UPDATE crm_lead SET contact_name = 'Old one, renamed' WHERE id = %s", [old])
            cur.execute('UPDATE crm_lead SET company_id = 2 WHERE id = %s', [other])
            new = _orm_create(cur)
            cur.execute("UPDATE crm_lead SET contact_name = 'Old one, again' WHERE id = %s", [old])
        conn.commit()
    assert [(op, org, str(data['id'])) for op, org, data in _journal(odoo_db)] == [
        ('updated', '1', str(old)), ('deleted', '1', str(other)), ('created', '2', str(other)),
        ('created', '1', str(new)), ('updated', '1', str(old))]


def test_constraints_checked_early_then_more_writes_are_folded_too(odoo_db):
    """SET CONSTRAINTS ... IMMEDIATE fires the fold before commit; the commit folds again."""
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            first = _orm_create(cur, stage_id=1)
            cur.execute('SET CONSTRAINTS ALL IMMEDIATE')       # fires the deferred triggers now
            cur.execute('SET CONSTRAINTS ALL DEFERRED')
            second = _orm_create(cur, stage_id=2)
            cur.execute("UPDATE crm_lead SET phone = 'later' WHERE id = %s", [first])
        conn.commit()
    assert [(op, data['id'], data['status'], data['phone']) for op, _, data in _journal(odoo_db)] == [
        ('created', first, 1, 'later'), ('created', second, 2, None)]


def test_a_savepoint_rolled_back_takes_its_lead_with_it(odoo_db):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            kept = _orm_create(cur, contact='Kept')
            cur.execute('SAVEPOINT s')
            _orm_create(cur, contact='Rolled back')
            cur.execute('ROLLBACK TO SAVEPOINT s')
        conn.commit()
    assert [(op, data['id'], data['lastname']) for op, _, data in _journal(odoo_db)] == [
        ('created', kept, 'Kept')]


def test_later_transactions_publish_updates_as_before(odoo_db):
    lead = insert_lead(odoo_db, 1)
    odoo_db.execute('UPDATE crm_lead SET stage_id = 2 WHERE id = %s', [lead])
    assert [(op, data['status']) for op, _, data in _journal(odoo_db)] == [('created', 1), ('updated', 2)]


def test_without_the_fold_the_same_sequence_publishes_a_stageless_creation(odoo_db):
    """The control: what the generic capture alone does with the ORM's sequence."""
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute(schema.lead_at_commit_drop_sql())
        conn.commit()
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            _orm_create(cur, stage_id=2)
        conn.commit()
    assert [(op, data['status']) for op, _, data in _journal(odoo_db)] == [('created', None), ('updated', 2)]


@pytest.mark.usefixtures('io_loop')
@pytest.mark.gen_test(timeout=60)
async def test_the_browser_sees_one_complete_created_event(odoo_db, make_sidecar, clients):
    sc = await make_sidecar(odoo_db)
    cfg = config.RealtimeConfig(sc.url, SECRET, 300)
    sales = await clients(sc.url, tokens.token_response(cfg, 6, 1)['token'])
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            lead = _orm_create(cur, contact='Grace Hopper', stage_id=2)
        conn.commit()
    marker = insert_lead(odoo_db, 1, contact_name='Marker')
    await sales.wait_events(2)
    assert [(e[0], e[1]['id'], e[1]['status']) for e in sales.events] == [
        ('prospect:created', str(lead), '2'), ('prospect:created', str(marker), '1')]


def test_prospects_of_another_watched_table_are_left_alone(odoo_db):
    """A text-keyed prospect table watched in the same database never breaks a lead's commit."""
    odoo_db.execute("CREATE TABLE other_prospects (id text PRIMARY KEY, org text, firstname text)")
    odoo_db.execute("SELECT crm_realtime.watch('public.other_prospects', 'prospect', 'org', 'id', "
                    "'{\"lastname\": null, \"email\": null, \"phone\": null, \"status\": null, \"source\": null, "
                    "\"notes\": null, \"created_at\": null, \"updated_at\": null}')")
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO other_prospects VALUES ('p-1', '1', 'Ada')")
            cur.execute("UPDATE other_prospects SET firstname = 'Ada L.' WHERE id = 'p-1'")
            lead = _orm_create(cur, stage_id=2)
        conn.commit()
    assert [(op, data['id'], data.get('status')) for op, _, data in _journal(odoo_db)] == [
        ('created', 'p-1', None), ('updated', 'p-1', None), ('created', lead, 2)]


@pytest.mark.parametrize('ddl', [
    'ALTER TABLE crm_lead ALTER COLUMN company_id TYPE bigint',
    'ALTER TABLE crm_lead RENAME COLUMN contact_name TO contact_full_name',
    'ALTER TABLE crm_lead DROP COLUMN email_from',
    'ALTER TABLE crm_lead ALTER COLUMN write_date TYPE timestamptz',
])
def test_the_fold_never_blocks_a_migration_nor_fails_a_commit_after_it(odoo_db, ddl):
    """Issue 17 for the addon's own triggers: no column is named, so DDL passes and commits too."""
    odoo_db.execute(ddl)
    orm_insert = ORM_INSERT
    if 'email_from' in ddl:
        orm_insert = orm_insert.replace('"email_from", ', '').replace("'ada@example.com', ", '')
    if 'contact_full_name' in ddl:
        orm_insert = orm_insert.replace('"contact_name"', '"contact_full_name"')
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute(orm_insert, (1, 'Ada Lovelace'))
            (lead,) = cur.fetchone()
            cur.execute(ORM_FLUSH.format(ids=int(lead)), (2,))
        conn.commit()
    ((op, org, data),) = _journal(odoo_db)
    assert (op, org, data['id'], data['status']) == ('created', '1', lead, 2)
