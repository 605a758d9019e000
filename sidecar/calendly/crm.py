"""Apply a booking to the CRM's own tables, exactly once, in one transaction.

The prospect and notification tables are the ones ``crm_realtime.watch()``
registered in ``crm_realtime.watched_table``, and their columns are named by
the same field -> column mapping the capture triggers use; their column types
are read from the catalog (plain SQL through psycopg). The triggers then journal the writes and the
sidecar emits ``prospect:created`` / ``prospect:updated`` / ``notification``
like for any other change.

Exactly once: the transaction first takes a transaction-scoped advisory lock
on (organization, email), then inserts the idempotency row (organization,
kind, invitee URI) with ``ON CONFLICT DO NOTHING``. A second processor of the
same booking (duplicate delivery, webhook and poll, another replica) finds the
row and changes nothing; while the first one is still running it waits for it,
and if the first rolls back it does the work itself. The email lock also keeps
two bookings of one new person from creating two prospects, and because every
path takes it first, the implied-creation claim of a cancellation cannot
deadlock with a concurrent creation.

Failure policy: any error rolls the whole booking back (no partial notes, no
idempotency row), so whoever retries - Calendly's redelivery or the next poll
- starts clean. Deadlocks and serialization failures are retried here twice.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Dict, Optional, Tuple

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from . import booking as bk
from .store import ACQUIRE_TIMEOUT, BOOKING_TABLE

log = logging.getLogger('crm_realtime.calendly.crm')

# outcomes (also the values of the bookings metric's label)
PROSPECT_CREATED = 'prospect_created'
APPOINTMENT_ADDED = 'appointment_added'
CANCELLATION_NOTED = 'cancellation_noted'
PROSPECT_MISSING = 'prospect_missing'     # a cancellation whose prospect was deleted meanwhile
DUPLICATE = 'duplicate'


class MappingError(Exception):
    """The CRM tables are not watched the way a booking needs (message for the operator)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    outcome: str
    prospect_id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    type: str                     # as pg_catalog.format_type() spells it

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.name)

    def cast(self, placeholder=sql.Placeholder()) -> sql.Composable:
        """A text parameter cast to this column's own type (integer, uuid, jsonb, text...)."""
        return sql.SQL('CAST(CAST({} AS text) AS {})').format(placeholder, sql.SQL(self.type))


@dataclasses.dataclass(frozen=True)
class _Mapped:
    table: sql.Identifier
    pk: _Column
    org: _Column
    fields: Dict[str, _Column]    # event field -> column (mapped fields only)

    def col(self, field) -> Optional[_Column]:
        return self.fields.get(field)


_MAPPING_SQL = """
    SELECT w."relation"::oid AS oid, n.nspname AS schema, c.relname AS name, w."kind",
           w."pk_column", w."org_column", w."fields"
      FROM "crm_realtime"."watched_table" w
      JOIN pg_catalog.pg_class c ON c.oid = w."relation"
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
"""
_COLUMNS_SQL = """
    SELECT a.attname AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
"""
_RETRIED = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


class CrmWriter:
    def __init__(self, pool: AsyncConnectionPool, prospect_status: str):
        self.pool = pool
        self.prospect_status = prospect_status
        self._columns: Dict[Tuple, Dict[str, _Column]] = {}

    async def apply(self, organization_id: str, booking: bk.Booking, *, via: str,
                    connection_id: Optional[str] = None, conn: Optional[AsyncConnection] = None) -> Outcome:
        """Apply ``booking`` to ``organization_id``'s CRM rows unless already applied.

        On ``conn`` when given (the poll's own connection), else on a pooled one.
        """
        for attempt in range(3):
            try:
                if conn is not None:
                    return await self._in_transaction(conn, str(organization_id), booking, via, connection_id)
                async with self.pool.connection(timeout=ACQUIRE_TIMEOUT) as pooled:
                    return await self._in_transaction(pooled, str(organization_id), booking, via,
                                                      connection_id)
            except _RETRIED as exc:
                if attempt < 2:
                    log.warning('booking %s %s: %s, retrying', booking.kind, booking.invitee_uri, exc.sqlstate)
                    continue
                raise
        raise AssertionError('unreachable')  # pragma: no cover

    async def _in_transaction(self, conn, org, booking, via, connection_id) -> Outcome:
        async with conn.transaction():
            return await self._apply(conn, org, booking, via, connection_id)

    async def _apply(self, conn: AsyncConnection, org: str, booking: bk.Booking, via: str,
                     connection_id: Optional[str]) -> Outcome:
        await conn.execute('SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s, 0))',
                           (f'crm_realtime.calendly.prospect:{org}:{booking.email}',))
        if not await self._claim(conn, org, booking, via, connection_id):
            return Outcome(DUPLICATE)
        prospects, notifications = await self._mappings(conn)

        if booking.kind == bk.CREATED:
            result = await self._created(conn, prospects, notifications, org, booking)
        else:
            # A cancellation implies its booking: when that was missed (its
            # webhook lost, never polled), apply it first so notes keep their order.
            created = booking.as_created()
            if await self._claim(conn, org, created, via, connection_id):
                implied = await self._created(conn, prospects, notifications, org, created)
                await self._record(conn, org, created, implied)
            prospect_id = await self._find(conn, prospects, org, booking.email)
            if prospect_id is None:
                result = Outcome(PROSPECT_MISSING)
            else:
                await self._append(conn, prospects, prospect_id, bk.note_line(booking))
                result = Outcome(CANCELLATION_NOTED, prospect_id)
        await self._record(conn, org, booking, result)
        return result

    async def _created(self, conn, prospects: _Mapped, notifications: Optional[_Mapped], org: str,
                       booking: bk.Booking) -> Outcome:
        line = bk.note_line(booking)
        prospect_id = await self._find(conn, prospects, org, booking.email)
        if prospect_id is None:
            prospect_id = await self._insert_prospect(conn, prospects, org, booking, line)
            outcome = PROSPECT_CREATED
        else:
            # the prospect keeps its source; the booking is recorded in notes and calendly_booking
            await self._append(conn, prospects, prospect_id, line)
            outcome = APPOINTMENT_ADDED
        if notifications is not None:
            await self._notify(conn, notifications, org, booking, prospect_id, outcome == PROSPECT_CREATED)
        return Outcome(outcome, prospect_id)

    # ----------------------------------------------------------------- idempotency

    async def _claim(self, conn, org, booking: bk.Booking, via, connection_id) -> bool:
        cur = await conn.execute(sql.SQL(
            'INSERT INTO {} (organization_id, kind, invitee_uri, event_uri, connection_id, outcome, via) '
            "VALUES (%s, %s, %s, %s, %s, 'pending', %s) ON CONFLICT DO NOTHING RETURNING kind")
            .format(BOOKING_TABLE),
            (org, booking.kind, booking.invitee_uri, booking.event_uri, connection_id, via))
        return await cur.fetchone() is not None

    async def _record(self, conn, org, booking: bk.Booking, result: Outcome) -> None:
        await conn.execute(sql.SQL(
            'UPDATE {} SET outcome = %s, prospect_id = %s '
            'WHERE organization_id = %s AND kind = %s AND invitee_uri = %s').format(BOOKING_TABLE),
            (result.outcome, result.prospect_id, org, booking.kind, booking.invitee_uri))

    # ----------------------------------------------------------------- CRM rows

    async def _find(self, conn, m: _Mapped, org: str, email: str) -> Optional[str]:
        created = m.col('created_at')
        order = [created.ident] if created is not None else []
        query = sql.SQL('SELECT {pk}::text FROM {t} WHERE {org}::text = %s AND lower({email}) = %s '
                        'ORDER BY {order} LIMIT 1 FOR UPDATE').format(
            pk=m.pk.ident, t=m.table, org=m.org.ident, email=m.col('email').ident,
            order=sql.SQL(', ').join([*order, m.pk.ident]))
        row = await (await conn.execute(query, (org, email))).fetchone()
        return None if row is None else row[0]

    async def _insert(self, conn, m: _Mapped, org: str, values: Dict[str, object],
                      returning: bool) -> Optional[str]:
        """INSERT the mapped ``values`` (field -> value, or ``sql.SQL`` for an expression)."""
        names, exprs, params = [m.org.ident], [m.org.cast()], [org]
        for field, value in values.items():
            column = m.col(field)
            if column is None:
                continue
            names.append(column.ident)
            if isinstance(value, sql.Composable):
                exprs.append(value)
            else:
                exprs.append(column.cast())
                params.append(value)
        query = sql.SQL('INSERT INTO {} ({}) VALUES ({})').format(
            m.table, sql.SQL(', ').join(names), sql.SQL(', ').join(exprs))
        if returning:
            query += sql.SQL(' RETURNING {}::text').format(m.pk.ident)
        cur = await conn.execute(query, params)
        return (await cur.fetchone())[0] if returning else None

    async def _insert_prospect(self, conn, m: _Mapped, org: str, booking: bk.Booking, line: str) -> str:
        now = sql.SQL('now()')
        return await self._insert(conn, m, org, {
            'firstname': booking.firstname, 'lastname': booking.lastname, 'email': booking.email,
            'phone': booking.phone, 'status': self.prospect_status, 'source': bk.SOURCE,
            'notes': line, 'created_at': now, 'updated_at': now}, returning=True)

    async def _append(self, conn, m: _Mapped, prospect_id: str, line: str) -> None:
        notes, updated = m.col('notes'), m.col('updated_at')
        sets, params = [], []
        if notes is not None:
            sets.append(sql.SQL("{n} = CASE WHEN coalesce({n}, '') = '' THEN %s ELSE {n} || %s END")
                        .format(n=notes.ident))
            params += [line, '\n' + line]
        if updated is not None:
            sets.append(sql.SQL('{} = now()').format(updated.ident))
        if sets:
            await conn.execute(sql.SQL('UPDATE {} SET {} WHERE {} = {}').format(
                m.table, sql.SQL(', ').join(sets), m.pk.ident, m.pk.cast()), (*params, prospect_id))

    async def _notify(self, conn, m: _Mapped, org: str, booking: bk.Booking, prospect_id: str,
                      new_prospect: bool) -> None:
        ntype, title, message = bk.notification_texts(booking, new_prospect)
        meta = json.dumps(bk.notification_meta(booking, prospect_id), ensure_ascii=False)
        await self._insert(conn, m, org, {'type': ntype, 'title': title, 'message': message,
                                          'created_at': sql.SQL('now()'), 'meta': meta}, returning=False)

    # ----------------------------------------------------------------- mapping

    async def _mappings(self, conn) -> Tuple[_Mapped, Optional[_Mapped]]:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(_MAPPING_SQL)
        rows = await cur.fetchall()
        by_kind: Dict[str, list] = {}
        for r in rows:
            by_kind.setdefault(r['kind'], []).append(r)
        for kind, found in by_kind.items():
            if len(found) > 1:
                raise MappingError(f'several {kind} tables are watched ('
                                   + ', '.join(f'{r["schema"]}.{r["name"]}' for r in found)
                                   + '); Calendly bookings need exactly one.')
        if 'prospect' not in by_kind:
            raise MappingError('no prospect table is watched (run sql/install.sql or '
                               'crm_realtime.watch() for the CRM\'s prospect table).')
        prospects = await self._mapped(conn, by_kind['prospect'][0])
        if prospects.col('email') is None:
            raise MappingError('the watched prospect table maps no email column; Calendly bookings '
                               'match prospects by email.')
        notifications = None
        if 'notification' in by_kind:
            notifications = await self._mapped(conn, by_kind['notification'][0])
        return prospects, notifications

    async def _mapped(self, conn, r) -> _Mapped:
        fields = r['fields']
        key = (r['oid'], json.dumps(fields, sort_keys=True), r['pk_column'], r['org_column'])
        columns = self._columns.get(key)
        if columns is None:
            # read once per mapping version; watch() again and the key changes
            cur = await conn.execute(_COLUMNS_SQL, (r['oid'],))
            columns = {name: _Column(name, type_) for name, type_ in await cur.fetchall()}
            self._columns[key] = columns
        mapped = {f: columns[c] for f, c in fields.items() if c is not None and f != 'id' and c in columns}
        return _Mapped(sql.Identifier(r['schema'], r['name']), columns[r['pk_column']],
                       columns[r['org_column']], mapped)
