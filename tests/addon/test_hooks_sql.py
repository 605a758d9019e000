"""The SQL the addon's install/uninstall hooks run, on an Odoo-shaped database."""
import ast
import shutil

import pytest

from .support import ROOT, VERSIONS, create_odoo_schema, insert_lead, load_lib, module_dir, schema

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


def test_sql_is_the_modules_own_copy_and_nothing_outside_it(tmp_path):
    assert schema.SQL_DIR == module_dir('17.0') / 'data'
    for name in schema.SHIPPED_SQL:
        assert schema.sql_text(name) == (ROOT / 'sql' / name).read_text()
    # nothing in lib/ reaches outside the module: no sidecar package, no parents[n]
    for path in (module_dir('17.0') / 'lib').glob('*.py'):
        tree = ast.parse(path.read_text())
        imported = {n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m.split('.')[0] == 'sidecar' for m in imported), path
        assert 'parents[' not in path.read_text(), path


def test_an_incomplete_module_copy_stops_with_a_sentence(tmp_path):
    module = tmp_path / 'addons' / 'crm_realtime'
    shutil.copytree(module_dir('18.0'), module)
    (module / 'data' / 'uninstall.sql').unlink()
    copied = load_lib(module, 'crm_realtime_lib_incomplete')
    with pytest.raises(copied.schema.SqlNotFound, match='the module folder is incomplete'):
        copied.schema.sql_text('uninstall.sql')


@pytest.mark.parametrize('version', VERSIONS)
def test_each_version_installs_and_uninstalls_from_a_bare_addons_path(version, tmp_path, empty_database):
    """The module folder copied on its own (no repository around it) installs and uninstalls."""
    module = tmp_path / 'addons' / 'crm_realtime'
    shutil.copytree(module_dir(version), module)
    copied = load_lib(module, f'crm_realtime_lib_copy_{version.replace(".", "_")}').schema
    assert copied.SQL_DIR == module / 'data'
    create_odoo_schema(empty_database)
    with empty_database.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            copied.install(cur)
        conn.commit()
    lead = insert_lead(empty_database, 1)
    assert empty_database.execute("SELECT op, data->>'id' FROM crm_realtime.journal") == [('created', str(lead))]
    with empty_database.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            copied.uninstall(cur)
        conn.commit()
    assert not _schema_exists(empty_database)
    assert empty_database.execute(TRIGGERS) == []


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
        ('crm_lead', 'crm_realtime_capture'), ('crm_lead', 'crm_realtime_capture_delete'),
        ('crm_lead', 'crm_realtime_capture_update'),
        ('crm_lead', 'crm_realtime_lead_company_set_at_commit'),
        ('crm_lead', 'crm_realtime_lead_created_at_commit'),
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
