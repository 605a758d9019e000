"""The SQL the addon's install/uninstall hooks run, on an Odoo-shaped database."""
import sys

import pytest

from sidecar.sqlfiles import sql_text as packaged_sql_text

from .support import create_odoo_schema, insert_lead, schema

TRIGGERS = """SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              WHERE NOT t.tgisinternal ORDER BY 1, 2"""


def _schema_exists(database):
    return database.execute("SELECT to_regnamespace('crm_realtime') IS NOT NULL")[0][0]


@pytest.fixture
def odoo_db(empty_database):
    create_odoo_schema(empty_database)
    return empty_database


def _install(database):
    with database.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            schema.install(cur)
        conn.commit()


@pytest.mark.parametrize('name', ['install.sql', 'uninstall.sql'])
def test_transaction_frame_is_stripped_and_nothing_else(name):
    text = schema.sql_text(name)
    body = schema.transaction_body(text, name)
    assert 'BEGIN;\n' not in body.splitlines(keepends=True) and 'COMMIT;' not in body
    # every non-comment line of the file is still there, in order
    kept = [line for line in text.splitlines() if line.strip() not in ('BEGIN;', 'COMMIT;')
            and line.strip() and not line.lstrip().startswith('--')]
    assert [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith('--')] == kept


@pytest.mark.parametrize('text', [
    'SELECT 1;\nBEGIN;\nSELECT 2;\nCOMMIT;\n',      # a statement before the frame
    'BEGIN;\nSELECT 2;\nCOMMIT;\nSELECT 3;\n',      # ... or after it
    'BEGIN;\nBEGIN;\nSELECT 2;\nCOMMIT;\n',         # two frames
    'SELECT 2;\n',                                  # no frame
])
def test_transaction_body_refuses_unexpected_shapes(text):
    with pytest.raises(ValueError):
        schema.transaction_body(text, 'x.sql')


def test_sql_comes_from_the_installed_package_else_the_checkout(monkeypatch, tmp_path):
    assert schema.sql_text('install.sql') == packaged_sql_text('install.sql')
    monkeypatch.setitem(sys.modules, 'sidecar.sqlfiles', None)     # "not importable"
    assert schema.sql_text('uninstall.sql') == (schema.CHECKOUT_SQL_DIR / 'uninstall.sql').read_text()
    monkeypatch.setattr(schema, 'CHECKOUT_SQL_DIR', tmp_path)
    with pytest.raises(schema.SqlNotFound, match='install the crm-realtime package'):
        schema.sql_text('install.sql')


def test_install_commits_or_rolls_back_with_the_callers_transaction(odoo_db):
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            schema.install(cur)
            cur.execute(TRIGGERS)
            assert cur.fetchall()
        conn.rollback()
    assert not _schema_exists(odoo_db)
    assert odoo_db.execute(TRIGGERS) == []

    _install(odoo_db)
    assert _schema_exists(odoo_db)
    assert odoo_db.execute(TRIGGERS) == [
        ('crm_lead', 'crm_realtime_capture'), ('crm_lead', 'crm_realtime_capture_update'),
        ('crm_realtime_notification', 'crm_realtime_capture')]
    watched = dict((str(rel), rest) for rel, *rest in odoo_db.execute(
        'SELECT relation::text, kind, org_column::text, user_column::text, fields '
        'FROM crm_realtime.watched_table'))
    assert watched['crm_lead'] == ['prospect', 'company_id', None,
                                   {'id': 'id', **schema.LEAD_FIELDS}]
    assert watched['crm_realtime_notification'] == ['notification', 'company_id', 'user_id',
                                                    {'id': 'id', **schema.NOTIFICATION_FIELDS}]


def test_lead_changes_land_in_the_journal_with_the_documented_mapping(odoo_db):
    _install(odoo_db)
    lead = insert_lead(odoo_db, 1, contact_name='Grace Hopper', stage_id=2)
    odoo_db.execute("INSERT INTO crm_lead (name, company_id) VALUES ('no company', NULL)")
    (kind, op, org, data), = odoo_db.execute(
        'SELECT kind, op, organization_id, data FROM crm_realtime.journal ORDER BY id')
    assert (kind, op, org) == ('prospect', 'created', '1')
    row = odoo_db.execute('SELECT contact_name, email_from, phone, stage_id, source_id, description '
                          'FROM crm_lead WHERE id = %s', [lead])[0]
    assert data['id'] == lead and data['firstname'] is None
    assert [data[f] for f in ('lastname', 'email', 'phone', 'status', 'source', 'notes')] == list(row)


def test_install_twice_is_harmless(odoo_db):
    _install(odoo_db)
    _install(odoo_db)
    insert_lead(odoo_db, 1)
    assert odoo_db.execute('SELECT count(*) FROM crm_realtime.journal')[0][0] == 1


def test_uninstall_removes_capture_and_leaves_odoo_tables_alone(odoo_db):
    _install(odoo_db)
    lead = insert_lead(odoo_db, 1)
    columns = 'SELECT table_name, column_name, data_type FROM information_schema.columns ' \
              "WHERE table_schema = 'public' ORDER BY 1, 2"
    before = odoo_db.execute(columns)
    with odoo_db.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            schema.uninstall(cur)
        conn.commit()
    assert not _schema_exists(odoo_db)
    assert odoo_db.execute(TRIGGERS) == []
    assert odoo_db.execute(columns) == before
    assert odoo_db.execute('SELECT id FROM crm_lead') == [(lead,)]
    insert_lead(odoo_db, 2)          # Odoo keeps working without the capture
    assert odoo_db.execute('SELECT count(*) FROM crm_lead')[0][0] == 2
