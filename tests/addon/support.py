"""Load the addon's ``lib`` without Odoo, and build an Odoo-shaped database.

The addon is one module folder per Odoo version (``addon/<version>/crm_realtime``),
each a complete copy (``addon/sync.py``; ``test_packaging`` checks the copies).
``crm_realtime/__init__.py`` imports Odoo, so ``lib`` cannot be imported through
its package here; it is loaded on its own (its modules only use relative imports
among themselves), by default from the 17.0 folder.
"""
from __future__ import annotations

import pytest

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ('17.0', '18.0', '19.0')
ADDON = ROOT / 'addon' / '17.0' / 'crm_realtime'


def module_dir(version: str) -> Path:
    return ROOT / 'addon' / version / 'crm_realtime'


def load_lib(module: Path = ADDON, name: str = 'crm_realtime_lib'):
    """``<module>/lib`` imported as the package ``name``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, module / 'lib' / '__init__.py', submodule_search_locations=[str(module / 'lib')])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
        for sub in ('config', 'once', 'schema', 'tokens'):
            importlib.import_module(f'{name}.{sub}')
    return sys.modules[name]


load_lib()
from crm_realtime_lib import config, once, schema, tokens  # noqa: E402

__all__ = ['ADDON', 'VERSIONS', 'module_dir', 'load_lib', 'config', 'once', 'schema', 'tokens', 'ODOO_SCHEMA', 'create_odoo_schema', 'insert_lead']

#: The columns Odoo's ORM creates (17.0 to 19.0) for the tables the addon touches (the
#: types are the ORM's: Char -> varchar, Html/Text -> text, Many2one -> int4,
#: Datetime -> timestamp without time zone in UTC, Json -> jsonb), cut down to
#: what the hooks and the tests need plus a few the capture must ignore.
ODOO_SCHEMA = """
CREATE TABLE res_company (
    id   serial PRIMARY KEY,
    name varchar NOT NULL
);
CREATE TABLE res_users (
    id         serial PRIMARY KEY,
    login      varchar NOT NULL,
    company_id int4 REFERENCES res_company
);
CREATE TABLE crm_stage (
    id   serial PRIMARY KEY,
    name jsonb NOT NULL
);
CREATE TABLE utm_source (
    id   serial PRIMARY KEY,
    name varchar NOT NULL
);
CREATE TABLE crm_lead (
    id               serial PRIMARY KEY,
    name             varchar NOT NULL,
    company_id       int4 REFERENCES res_company ON DELETE SET NULL,
    user_id          int4 REFERENCES res_users ON DELETE SET NULL,
    team_id          int4,
    stage_id         int4 REFERENCES crm_stage ON DELETE RESTRICT,
    source_id        int4 REFERENCES utm_source ON DELETE SET NULL,
    type             varchar NOT NULL DEFAULT 'lead',
    priority         varchar DEFAULT '0',
    active           boolean DEFAULT true,
    contact_name     varchar,
    partner_name     varchar,
    email_from       varchar,
    phone            varchar,
    description      text,
    expected_revenue numeric,
    create_uid       int4,
    create_date      timestamp without time zone,
    write_uid        int4,
    write_date       timestamp without time zone
);
CREATE TABLE crm_realtime_notification (
    id          serial PRIMARY KEY,
    company_id  int4 NOT NULL REFERENCES res_company ON DELETE CASCADE,
    user_id     int4 REFERENCES res_users ON DELETE CASCADE,
    type        varchar NOT NULL,
    title       varchar,
    message     text,
    meta        jsonb,
    create_uid  int4,
    create_date timestamp without time zone,
    write_uid   int4,
    write_date  timestamp without time zone
);
INSERT INTO res_company (id, name) VALUES (1, 'My Company'), (2, 'Other Company');
INSERT INTO res_users (id, login, company_id) VALUES (2, 'admin', 1), (6, 'sales', 1), (7, 'other', 2);
INSERT INTO crm_stage (id, name) VALUES (1, '{"en_US": "New"}'), (2, '{"en_US": "Qualified"}');
INSERT INTO utm_source (id, name) VALUES (3, 'Website');
"""


def create_odoo_schema(database) -> None:
    database.execute(ODOO_SCHEMA)


@pytest.fixture
def odoo_db(empty_database):
    """An Odoo-shaped database after the addon's post_init_hook."""
    create_odoo_schema(empty_database)
    with empty_database.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            schema.install(cur)
        conn.commit()
    return empty_database


def insert_lead(database, company_id=1, **values) -> int:
    """Insert a lead the way the ORM does: create/write dates set explicitly, in UTC."""
    values = {'name': 'Website inquiry', 'contact_name': 'Ada Lovelace', 'email_from': 'ada@example.com',
              'phone': '+33 1 23 45 67 89', 'stage_id': 1, 'source_id': 3,
              'description': '<p>first contact</p>', **values}
    cols = ', '.join(['company_id', 'create_date', 'write_date'] + list(values))
    marks = ', '.join(['%s', "(now() AT TIME ZONE 'UTC')", "(now() AT TIME ZONE 'UTC')"]
                      + ['%s'] * len(values))
    rows = database.execute(f'INSERT INTO crm_lead ({cols}) VALUES ({marks}) RETURNING id',
                            [company_id] + list(values.values()))
    return rows[0][0]
