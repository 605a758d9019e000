"""What the install/uninstall hooks run, and the documented column mappings.

Where the SQL comes from
    The module ships its own copy of the repository's ``sql/install.sql`` and
    ``sql/uninstall.sql`` in ``data/`` (module data, next to this ``lib/``), so
    it installs and uninstalls from any addons path, whatever happens to the
    checkout it was copied from. ``addon/sync.py`` refreshes the copies and the
    repository's tests fail while a copy differs from ``sql/``.

Inside Odoo's transaction
    Both files wrap themselves in ``BEGIN; ... COMMIT;`` so ``psql -f`` runs
    them atomically. A hook runs inside the module-install transaction, where
    that ``COMMIT`` would commit Odoo's half-done install; ``transaction_body``
    strips the frame (and checks it is exactly the expected one) so the SQL
    commits or rolls back with the rest of the install.

A new lead is published once, complete, at commit (``LEAD_AT_COMMIT``)
    The ORM creates a lead with an INSERT, then fills the stored computed
    fields it did not receive (``stage_id``, often ``team_id``, sometimes
    ``company_id``) with an UPDATE at flush, in the same transaction. The
    generic capture of ``sql/install.sql`` journals both statements, so the
    browsers would see ``prospect:created`` with ``status`` null, then at once
    ``prospect:updated``. The addon adds a deferred constraint trigger on
    ``crm_lead`` that runs at commit and folds the transaction's journal rows:
    for every lead whose first event in the transaction is a creation, the
    last creation is kept, rewritten with the row as it is at commit, and the
    lead's other rows of the transaction are removed. A lead created and
    deleted (or left without a company) in one transaction publishes nothing.
    Nothing outside the transaction ever saw those rows, so nothing is lost.
    Leads of a batch create of ``crm_realtime.bulk_min_rows`` (100) or more are
    journaled as one compact row per company whose payloads the sidecar builds
    from the rows when it reads it; the fold then drops those leads' other rows
    of the transaction (unless a lead moved to another company).

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

#: <module>/lib/schema.py -> <module>/data, where the module keeps its copy of sql/
SQL_DIR = Path(__file__).resolve().parent.parent / 'data'
#: the files of the repository's sql/ the module ships (addon/sync.py copies them)
SHIPPED_SQL = ('install.sql', 'uninstall.sql')

#: The addon's own objects for "a new lead is published once, at commit".
LEAD_AT_COMMIT_FUNCTION = 'odoo_lead_created_at_commit'
LEAD_AT_COMMIT_TRIGGERS = ('crm_realtime_lead_created_at_commit',
                           'crm_realtime_lead_company_set_at_commit')
#: transaction-local setting marking "this statement already folded this transaction"
LEAD_AT_COMMIT_MARK = 'crm_realtime.odoo_lead_fold'


class SqlNotFound(RuntimeError):
    """The module's copy of the SQL is missing (an incomplete copy of the module)."""


def sql_text(name: str) -> str:
    """The text of the module's copy of ``sql/<name>`` (``data/<name>``)."""
    path = SQL_DIR / name
    try:
        return path.read_text(encoding='utf-8')
    except FileNotFoundError:
        raise SqlNotFound(
            f'crm_realtime: {path} is missing; the module folder is incomplete '
            f'(copy the whole crm_realtime folder of the version you run).') from None


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


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _utc_columns(cr, table: str) -> set:
    """Columns of ``table`` typed ``timestamp without time zone`` (Odoo's naive UTC)."""
    cr.execute("SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass "
               "AND attnum > 0 AND NOT attisdropped AND atttypid = 'timestamp'::regtype", (table,))
    return {row[0] for row in cr.fetchall()}


def lead_payload_sql(row: str, utc_columns) -> str:
    """``jsonb_build_object(...)`` of a crm_lead row as a prospect event, the way the capture builds it.

    ``row`` is the row as JSON (``to_jsonb(l)``), so that no column is named in
    SQL: a column the host renames, drops or retypes gives null (or its new
    text), never an error inside the host's COMMIT, and never blocks its DDL.
    """
    parts = [f"'id', {row}->{_quote_literal(LEAD_PK_COLUMN)}"]
    for field, column in LEAD_FIELDS.items():
        if column is None:
            value = 'NULL'
        elif column in utc_columns:
            # as the capture does: the UTC text with its offset, which cannot fail
            value = f"pg_catalog.to_jsonb((({row}->>{_quote_literal(column)}) || '+00:00')::text)"
        else:
            value = f'{row}->{_quote_literal(column)}'
        parts.append(f"'{field}', {value}")
    return 'pg_catalog.jsonb_build_object(' + ', '.join(parts) + ')'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def lead_at_commit_sql(utc_columns) -> str:
    """The function and the two deferred constraint triggers folding a new lead's events at commit.

    One fold serves the whole transaction: the first firing at commit folds
    every lead and records ``<txid>:<statement_timestamp()>`` in a
    transaction-local setting; the other firings of that statement (one per
    inserted lead) compare the mark and return, so a bulk import stays linear.
    (Probing the journal instead, e.g. its ``max(id)``, would step over the
    rows the fold just deleted on every firing: quadratic; and a
    ``BEGIN ... EXCEPTION`` block per firing would open a subtransaction per lead.)
    """
    lead, org, pk = LEAD_TABLE, _quote_ident(LEAD_ORG_COLUMN), _quote_ident(LEAD_PK_COLUMN)
    payload = lead_payload_sql('r', utc_columns)
    org_text = f"r->>{_quote_literal(LEAD_ORG_COLUMN)}"
    fn = f'"crm_realtime".{_quote_ident(LEAD_AT_COMMIT_FUNCTION)}'
    created, company_set = (_quote_ident(t) for t in LEAD_AT_COMMIT_TRIGGERS)
    return f"""
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fold$
DECLARE
    -- Deferred triggers fire inside one statement: the COMMIT (or a SET
    -- CONSTRAINTS ... IMMEDIATE). The first firing of that statement folds the
    -- whole transaction; the others see the mark and return. Rows journaled by
    -- a later statement are folded by that statement's firings.
    v_mark    text := pg_catalog.pg_current_xact_id()::text || ':' || pg_catalog.statement_timestamp()::text;
    v_txid    xid8 := pg_catalog.pg_current_xact_id();
    v_keep    bigint[];
    v_payload jsonb[];
    v_drop    bigint[];
BEGIN
    IF pg_catalog.current_setting('{LEAD_AT_COMMIT_MARK}', true) = v_mark THEN
        RETURN NULL;
    END IF;
    -- One pass over the transaction's rows (an index range on the journal's key),
    -- then one index probe per lead; the results go to arrays so the UPDATE and
    -- the DELETE below are index lookups too, whatever the planner guesses.
    WITH born AS (      -- leads whose first event in this transaction is a creation
        SELECT b.lead_id, b.keep_id, b.ids FROM (
            SELECT (j."data" ->> 'id') AS lead_id,
                   (pg_catalog.array_agg(j."op" ORDER BY j."id"))[1] AS first_op,
                   max(j."id") FILTER (WHERE j."op" = 'created') AS keep_id,
                   pg_catalog.array_agg(j."id") AS ids
              FROM "crm_realtime"."journal" j
             WHERE j."txid" = v_txid AND j."kind" = 'prospect'
               -- crm_lead's integer ids only: another watched prospect table's
               -- (uuid, text) ids are left alone and can never break the commit
               AND pg_catalog.jsonb_typeof(j."data" -> 'id') = 'number'
             GROUP BY 1) b
         WHERE b.first_op = 'created'
    ), decided AS (     -- keep the last creation, drop everything, or leave the lead alone
        SELECT b.keep_id, b.ids, {payload} AS payload,
               CASE WHEN r IS NULL OR {org_text} IS NULL THEN 'drop'     -- gone, or no company
                    WHEN {org_text} = c."organization_id" THEN 'keep'
                    ELSE 'leave' END AS action
          FROM born b
          JOIN "crm_realtime"."journal" c ON c."txid" = v_txid AND c."id" = b.keep_id
          LEFT JOIN {lead} l ON l.{pk} = b.lead_id::bigint
          CROSS JOIN LATERAL (SELECT pg_catalog.to_jsonb(l) AS r) AS lr
    )
    SELECT pg_catalog.array_agg(d.keep_id) FILTER (WHERE d.action = 'keep'),
           pg_catalog.array_agg(d.payload) FILTER (WHERE d.action = 'keep'),
           (SELECT pg_catalog.array_agg(x) FROM decided e, pg_catalog.unnest(e.ids) AS x
             WHERE e.action = 'drop' OR (e.action = 'keep' AND x <> e.keep_id))
      INTO v_keep, v_payload, v_drop
      FROM decided d;
    IF v_keep IS NOT NULL THEN
        UPDATE "crm_realtime"."journal" j SET "data" = u.payload
          FROM ROWS FROM (pg_catalog.unnest(v_keep), pg_catalog.unnest(v_payload)) AS u(id, payload)
         WHERE j."txid" = v_txid AND j."id" = u.id AND j."data" IS DISTINCT FROM u.payload;
    END IF;
    IF v_drop IS NOT NULL THEN
        DELETE FROM "crm_realtime"."journal" j WHERE j."txid" = v_txid AND j."id" = ANY (v_drop);
    END IF;
    -- Leads of a multi-row INSERT (the ORM's batch create, from crm_realtime.bulk_min_rows
    -- rows on) are in a compact row, whose payloads the sidecar builds when it reads it: as
    -- the leads are at commit, complete. Their other rows of the transaction (the flush's
    -- UPDATE) are dropped when the lead is still in that company, gone, or without a
    -- company; a lead that moved to another company keeps them (they say where it went).
    IF EXISTS (SELECT FROM "crm_realtime"."journal" j
                WHERE j."txid" = v_txid AND j."op" = 'created_many'
                  AND (j."data" ->> 'table')::oid = '{lead}'::regclass) THEN
        DELETE FROM "crm_realtime"."journal" j
         USING (SELECT c."organization_id" AS org, k.key::bigint AS lead_id
                  FROM "crm_realtime"."journal" c,
                       pg_catalog.unnest((c."data" ->> 'keys')::text[]) AS k(key)
                 WHERE c."txid" = v_txid AND c."op" = 'created_many'
                   AND (c."data" ->> 'table')::oid = '{lead}'::regclass AND c."data" ? 'keys') AS b
          LEFT JOIN {lead} l ON l.{pk} = b.lead_id
         CROSS JOIN LATERAL (SELECT pg_catalog.to_jsonb(l) AS r) AS lr
         WHERE j."txid" = v_txid AND j."kind" = 'prospect' AND j."op" <> 'created_many'
           AND pg_catalog.jsonb_typeof(j."data" -> 'id') = 'number'
           AND (j."data" ->> 'id')::bigint = b.lead_id
           AND (r IS NULL OR {org_text} IS NULL OR {org_text} = b.org);
    END IF;
    PERFORM pg_catalog.set_config('{LEAD_AT_COMMIT_MARK}', v_mark, true);
    RETURN NULL;
END
$fold$;
REVOKE ALL ON FUNCTION {fn}() FROM PUBLIC;
DROP TRIGGER IF EXISTS {created} ON {lead};
DROP TRIGGER IF EXISTS {company_set} ON {lead};
CREATE CONSTRAINT TRIGGER {created} AFTER INSERT ON {lead}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}();
-- any update (not UPDATE OF company_id WHEN ...): a trigger naming a column
-- would block the host's ALTER COLUMN ... TYPE and DROP COLUMN of it
CREATE CONSTRAINT TRIGGER {company_set} AFTER UPDATE ON {lead}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {fn}();
"""


def lead_at_commit_drop_sql() -> str:
    """Drop what ``lead_at_commit_sql`` created (harmless when it is not there)."""
    fn = f'"crm_realtime".{_quote_ident(LEAD_AT_COMMIT_FUNCTION)}'
    drops = ''.join(f'        DROP TRIGGER IF EXISTS {_quote_ident(t)} ON {LEAD_TABLE};\n'
                    for t in LEAD_AT_COMMIT_TRIGGERS)
    return (f"DO $drop$ BEGIN\n    IF to_regclass('{LEAD_TABLE}') IS NOT NULL THEN\n{drops}"
            f"    END IF;\nEND $drop$;\nDROP FUNCTION IF EXISTS {fn}();\n")


def install(cr) -> None:
    """What ``post_init_hook`` runs: install.sql, the watches, then the lead fold at commit.

    ``cr`` is any DB-API cursor with ``execute(sql, params)`` (Odoo's, psycopg's);
    nothing here commits, so it all lands with the caller's transaction.
    """
    cr.execute(transaction_body(sql_text('install.sql'), 'data/install.sql'))
    _watch(cr, LEAD_TABLE, 'prospect', LEAD_ORG_COLUMN, LEAD_PK_COLUMN, LEAD_FIELDS)
    _watch(cr, NOTIFICATION_TABLE, 'notification', NOTIFICATION_ORG_COLUMN,
           NOTIFICATION_PK_COLUMN, NOTIFICATION_FIELDS, NOTIFICATION_USER_COLUMN)
    cr.execute(lead_at_commit_sql(_utc_columns(cr, LEAD_TABLE)))


def uninstall(cr) -> None:
    """What ``uninstall_hook`` runs: the addon's own triggers, then uninstall.sql."""
    cr.execute(lead_at_commit_drop_sql())
    cr.execute(transaction_body(sql_text('uninstall.sql'), 'data/uninstall.sql'))
