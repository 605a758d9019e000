"""Apply a booking to the CRM's own tables, exactly once, in one transaction.

The prospect and notification tables are the ones ``crm_realtime.watch()``
registered in ``crm_realtime.watched_table``, and their columns are named by
the same field -> column mapping the capture triggers use; the tables are
reflected with SQLAlchemy. The triggers then journal the writes and the
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

from sqlalchemy import (JSON, MetaData, Table, Text, case, cast, func, literal, select, text, update)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import booking as bk
from .store import booking_table

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
class _Mapped:
    table: Table
    pk: object
    org: object
    fields: Dict[str, object]     # event field -> Column (mapped fields only)

    def col(self, field):
        return self.fields.get(field)


_MAPPING_SQL = text('''
    SELECT w."relation"::oid AS oid, n.nspname AS schema, c.relname AS name, w."kind",
           w."pk_column", w."org_column", w."fields"
      FROM "crm_realtime"."watched_table" w
      JOIN pg_catalog.pg_class c ON c.oid = w."relation"
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
''')


class CrmWriter:
    def __init__(self, engine: AsyncEngine, prospect_status: str):
        self.engine = engine
        self.prospect_status = prospect_status
        self._reflected: Dict[Tuple, Table] = {}

    async def apply(self, organization_id: str, booking: bk.Booking, *, via: str,
                    connection_id: Optional[str] = None) -> Outcome:
        """Apply ``booking`` to ``organization_id``'s CRM rows unless already applied."""
        for attempt in range(3):
            try:
                async with self.engine.begin() as conn:
                    return await self._apply(conn, str(organization_id), booking, via, connection_id)
            except DBAPIError as exc:
                code = getattr(exc.orig, 'sqlstate', None)
                if code in ('40001', '40P01') and attempt < 2:
                    log.warning('booking %s %s: %s, retrying', booking.kind, booking.invitee_uri, code)
                    continue
                raise
        raise AssertionError('unreachable')  # pragma: no cover

    async def _apply(self, conn: AsyncConnection, org: str, booking: bk.Booking, via: str,
                     connection_id: Optional[str]) -> Outcome:
        await conn.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended(f'crm_realtime.calendly.prospect:{org}:{booking.email}', 0))))
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
        stmt = insert(booking_table).values(
            organization_id=org, kind=booking.kind, invitee_uri=booking.invitee_uri,
            event_uri=booking.event_uri, connection_id=connection_id, outcome='pending', via=via,
        ).on_conflict_do_nothing().returning(booking_table.c.kind)
        return (await conn.execute(stmt)).first() is not None

    async def _record(self, conn, org, booking: bk.Booking, result: Outcome) -> None:
        await conn.execute(update(booking_table).where(
            booking_table.c.organization_id == org, booking_table.c.kind == booking.kind,
            booking_table.c.invitee_uri == booking.invitee_uri,
        ).values(outcome=result.outcome, prospect_id=result.prospect_id))

    # ----------------------------------------------------------------- CRM rows

    async def _find(self, conn, m: _Mapped, org: str, email: str) -> Optional[str]:
        query = (select(m.pk).where(cast(m.org, Text) == org, func.lower(m.col('email')) == email)
                 .limit(1).with_for_update())
        created = m.col('created_at')
        query = query.order_by(*([created] if created is not None else []), m.pk)
        pk = (await conn.execute(query)).scalar()
        return None if pk is None else str(pk)

    async def _insert_prospect(self, conn, m: _Mapped, org: str, booking: bk.Booking, line: str) -> str:
        values = {'firstname': booking.firstname, 'lastname': booking.lastname, 'email': booking.email,
                  'phone': booking.phone, 'status': self.prospect_status, 'source': bk.SOURCE,
                  'notes': line, 'created_at': func.now(), 'updated_at': func.now()}
        row = {m.org.name: _as(m.org, org)}
        row.update({m.col(f).name: v for f, v in values.items() if m.col(f) is not None})
        pk = (await conn.execute(m.table.insert().values(row).returning(m.pk))).scalar_one()
        return str(pk)

    async def _append(self, conn, m: _Mapped, prospect_id: str, line: str) -> None:
        notes, updated = m.col('notes'), m.col('updated_at')
        values = {}
        if notes is not None:
            values[notes.name] = case((func.coalesce(notes, '') == '', literal(line)),
                                      else_=notes + literal('\n' + line))
        if updated is not None:
            values[updated.name] = func.now()
        if values:
            await conn.execute(m.table.update().where(m.pk == _as(m.pk, prospect_id)).values(values))

    async def _notify(self, conn, m: _Mapped, org: str, booking: bk.Booking, prospect_id: str,
                      new_prospect: bool) -> None:
        ntype, title, message = bk.notification_texts(booking, new_prospect)
        meta = bk.notification_meta(booking, prospect_id)
        meta_col = m.col('meta')
        values = {'type': ntype, 'title': title, 'message': message, 'created_at': func.now(),
                  'meta': meta if meta_col is not None and isinstance(meta_col.type, JSON)
                  else json.dumps(meta, ensure_ascii=False)}
        row = {m.org.name: _as(m.org, org)}
        row.update({m.col(f).name: v for f, v in values.items() if m.col(f) is not None})
        await conn.execute(m.table.insert().values(row))

    # ----------------------------------------------------------------- mapping

    async def _mappings(self, conn) -> Tuple[_Mapped, Optional[_Mapped]]:
        rows = (await conn.execute(_MAPPING_SQL)).mappings().all()
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
        table = self._reflected.get(key)
        if table is None:
            # reflected once per mapping version; watch() again and the key changes
            table = await conn.run_sync(lambda sync: Table(r['name'], MetaData(), schema=r['schema'],
                                                           autoload_with=sync))
            self._reflected[key] = table
        columns = {f: table.c[c] for f, c in fields.items() if c is not None and f != 'id'}
        return _Mapped(table, table.c[r['pk_column']], table.c[r['org_column']], columns)


def _as(column, value: str):
    """``value`` (text) cast to the column's own type (integer, uuid, text...)."""
    return cast(literal(value, Text), column.type)
