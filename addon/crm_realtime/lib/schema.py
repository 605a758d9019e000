"""What the install/uninstall hooks run, and the documented column mappings.

Where the SQL comes from
    ``sql/install.sql`` and ``sql/uninstall.sql`` are not copied into the
    addon (two copies would drift). ``sql_text`` reads them from the installed
    ``crm-realtime`` package (``sidecar.sqlfiles.sql_text``) when that imports
    in Odoo's Python, else from ``sql/`` of the repository checkout this addon
    sits in (``<repo>/addon/crm_realtime``). With neither, installing the addon
    stops with a sentence saying so, before anything is changed.

Inside Odoo's transaction
    Both files wrap themselves in ``BEGIN; ... COMMIT;`` so ``psql -f`` runs
    them atomically. A hook runs inside the module-install transaction, where
    that ``COMMIT`` would commit Odoo's half-done install; ``transaction_body``
    strips the frame (and checks it is exactly the expected one) so the SQL
    commits or rolls back with the rest of the install.

The mapping of ``crm_lead`` to the contract's prospect fields (``LEAD_FIELDS``)
    =============  ===============  ==========================================
    event field    crm_lead column  note
    =============  ===============  ==========================================
    id             id               integer, sent as a string
    firstname      (always null)    Odoo keeps one "Contact Name"
    lastname       contact_name     the whole contact name
    email          email_from
    phone          phone
    status         stage_id         the crm.stage id as text ("4"), not a name
    source         source_id        the utm.source id as text, or null
    notes          description      HTML, as Odoo stores it
    created_at     create_date      Odoo's naive UTC, published with an offset
    updated_at     write_date       same; every ORM write sets it
    =============  ===============  ==========================================

    Organization: ``company_id`` -- a lead without a company emits nothing.

The notification source (``NOTIFICATION_FIELDS``)
    Odoo has no table shaped like the contract's notifications, so the addon
    defines the model ``crm.realtime.notification`` (table
    ``crm_realtime_notification``: company_id, user_id, type, title, message,
    meta, create_date) and watches it: a row with a ``user_id`` reaches that
    user, a row without one the whole company.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

LEAD_TABLE = 'public.crm_lead'
LEAD_ORG_COLUMN = 'company_id'
LEAD_PK_COLUMN = 'id'
#: contract prospect field -> crm_lead column (None: always null)
LEAD_FIELDS: Dict[str, Optional[str]] = {
    'firstname': None,
    'lastname': 'contact_name',
    'email': 'email_from',
    'phone': 'phone',
    'status': 'stage_id',
    'source': 'source_id',
    'notes': 'description',
    'created_at': 'create_date',
    'updated_at': 'write_date',
}

NOTIFICATION_TABLE = 'public.crm_realtime_notification'
NOTIFICATION_ORG_COLUMN = 'company_id'
NOTIFICATION_USER_COLUMN = 'user_id'
NOTIFICATION_PK_COLUMN = 'id'
#: contract notification field -> crm_realtime_notification column
NOTIFICATION_FIELDS: Dict[str, Optional[str]] = {
    'type': 'type',
    'title': 'title',
    'message': 'message',
    'meta': 'meta',
    'created_at': 'create_date',
}

#: <repo>/addon/crm_realtime/lib/schema.py -> <repo>/sql
CHECKOUT_SQL_DIR = Path(__file__).resolve().parents[3] / 'sql'


class SqlNotFound(RuntimeError):
    """Neither the crm-realtime package nor a repository checkout provides the SQL."""


def sql_text(name: str) -> str:
    """The text of ``sql/<name>``, from the installed package or the checkout (see module doc)."""
    try:
        from sidecar.sqlfiles import sql_text as packaged
    except ImportError:      # not installed in Odoo's Python (or its psycopg 3 is missing)
        packaged = None
    if packaged is not None:
        return packaged(name)
    path = CHECKOUT_SQL_DIR / name
    if path.is_file():
        return path.read_text(encoding='utf-8')
    raise SqlNotFound(
        f'crm_realtime: cannot find sql/{name}: install the crm-realtime package in Odoo\'s '
        f'Python environment, or keep this addon inside its repository checkout '
        f'(looked in {CHECKOUT_SQL_DIR}).')


def transaction_body(text: str, name: str = 'SQL') -> str:
    """``text`` without its own ``BEGIN;`` / ``COMMIT;`` lines, for running inside a transaction.

    Only comments and blank lines may surround the frame, so stripping it can
    never drop a statement; anything else raises ``ValueError``.
    """
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == 'BEGIN;']
    commits = [i for i, line in enumerate(lines) if line.strip() == 'COMMIT;']
    if len(begins) != 1 or len(commits) != 1 or begins[0] > commits[0]:
        raise ValueError(f'{name} is not framed by exactly one BEGIN; ... COMMIT; pair')
    outside = lines[:begins[0]] + lines[commits[0] + 1:]
    if any(line.strip() and not line.lstrip().startswith('--') for line in outside):
        raise ValueError(f'{name} has statements outside its BEGIN; ... COMMIT; frame')
    return ''.join(lines[begins[0] + 1:commits[0]])


_WATCH = ('SELECT "crm_realtime"."watch"(%s::regclass, %s, %s::name, %s::name, %s::jsonb, %s::name)')


def _watch(cr, table, kind, org_column, pk_column, fields, user_column=None) -> None:
    cr.execute(_WATCH, (table, kind, org_column, pk_column, json.dumps(fields), user_column))


def install(cr) -> None:
    """What ``post_init_hook`` runs: install.sql, then watch crm_lead and the notification table.

    ``cr`` is any DB-API cursor with ``execute(sql, params)`` (Odoo's, psycopg's);
    nothing here commits, so it all lands with the caller's transaction.
    """
    cr.execute(transaction_body(sql_text('install.sql'), 'sql/install.sql'))
    _watch(cr, LEAD_TABLE, 'prospect', LEAD_ORG_COLUMN, LEAD_PK_COLUMN, LEAD_FIELDS)
    _watch(cr, NOTIFICATION_TABLE, 'notification', NOTIFICATION_ORG_COLUMN,
           NOTIFICATION_PK_COLUMN, NOTIFICATION_FIELDS, NOTIFICATION_USER_COLUMN)


def uninstall(cr) -> None:
    """What ``uninstall_hook`` runs: uninstall.sql (triggers and the crm_realtime schema go)."""
    cr.execute(transaction_body(sql_text('uninstall.sql'), 'sql/uninstall.sql'))
