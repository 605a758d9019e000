"""The shipped SQL: ``sql/`` of the repository, installed as package data ``sidecar.sql``."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import psycopg

_CHECKOUT_SQL = Path(__file__).resolve().parent.parent / 'sql'


def sql_text(name: str) -> str:
    """``name`` relative to sql/, e.g. 'install.sql' or 'examples/reference_crm.sql'."""
    # A source checkout (editable installs included) reads sql/ directly; a
    # wheel install carries the same files as package data.
    if (_CHECKOUT_SQL / 'install.sql').is_file():
        return (_CHECKOUT_SQL / name).read_text(encoding='utf-8')
    node = resources.files('sidecar.sql')
    for part in name.split('/'):
        node = node.joinpath(part)
    return node.read_text(encoding='utf-8')


def apply(database_url: str, name: str) -> None:
    """Run one shipped SQL file (each manages its own transaction)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql_text(name))
