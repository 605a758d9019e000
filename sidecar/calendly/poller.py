"""The poll that catches what webhooks miss.

Each run, for every active connection (a few at a time):

1. take the connection's poll lock (a PostgreSQL advisory lock), or skip it
   when another replica is polling it - never two polls of one connection;
   a scheduled run also skips a connection another replica polled less than
   ``min_gap`` ago (``last_poll_at``, read under the lock), so N replicas
   poll each connection about once per interval, not N times;
2. list its scheduled events of every status whose start is at or after
   ``watermark - SIDECAR_CALENDLY_LOOKBACK_HOURS``, every page;
3. for each event that changed since the last poll (status, update time or
   invitee counts differ from what ``calendly_event_seen`` holds), list its
   invitees, every page, and apply the bookings each one stands for through
   the same ``CrmWriter`` as webhooks; the idempotency row makes whatever was
   already applied a no-op;
4. when all of that succeeded, move the watermark to when this poll started.

Failure policy:

* 429, 5xx, timeouts: retried inside the client (see ``client.py``); when they
  persist the poll stops, records ``last_error`` and keeps the watermark, so
  the next poll lists the same window again. Nothing is lost, only delayed.
* 401: the connection is marked ``needs_reauth`` (shown by ``calendly list``
  and the ``crm_realtime_calendly_connections_needing_reauth`` gauge) and is
  not polled again until ``calendly connect`` stores a new token.
* 403 and any other error: recorded in ``last_error``, retried next interval.
* An event whose bookings failed is not marked seen, so it is fetched again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

from . import booking as bk
from .client import CalendlyClient, CalendlyError, Unauthorized
from .crm import CrmWriter
from .store import ACTIVE, Connection, Store, log_text

log = logging.getLogger('crm_realtime.calendly.poller')

#: connections polled at once; each holds one pooled database connection while it runs
POLL_CONCURRENCY = 3


@dataclasses.dataclass
class PollResult:
    connection_id: str
    locked_out: bool = False        # another process was polling it
    recent: bool = False            # polled (by any replica) less than min_gap ago
    polled: bool = False            # it was active and this process polled it
    events: int = 0                 # scheduled events listed
    events_fetched: int = 0         # events whose invitees were fetched
    bookings: int = 0               # bookings handed to the writer (applied or duplicate)
    applied: int = 0                # bookings that changed the CRM
    error: Optional[str] = None


def fingerprint(event) -> str:
    counter = event.get('invitees_counter') or {}
    return '|'.join(str(v) for v in (event.get('status'), event.get('updated_at'),
                                      counter.get('total'), counter.get('active')))


class Poller:
    def __init__(self, store: Store, writer: CrmWriter, client_for: Callable[[str], CalendlyClient], *,
                 lookback: timedelta, apply: Callable, on_reauth: Callable, page_size: int = 100,
                 concurrency: int = POLL_CONCURRENCY):
        self.store = store
        self.writer = writer
        self._client_for = client_for
        self._lookback = lookback
        self._apply = apply              # async (connection, booking, via, conn) -> Outcome
        self._on_reauth = on_reauth      # async () -> None, after a connection is marked
        self.page_size = page_size
        self._semaphore = asyncio.Semaphore(concurrency)

    async def poll_all(self, min_gap: Optional[timedelta] = None):
        """Poll every active connection (those polled less than ``min_gap`` ago excepted)."""
        connections = await self.store.list(status=ACTIVE)
        results = await asyncio.gather(*(self._bounded(c.id, min_gap) for c in connections))
        return list(results)

    async def _bounded(self, connection_id: str, min_gap) -> PollResult:
        async with self._semaphore:
            return await self.poll_connection(connection_id, min_gap)

    async def poll_connection(self, connection_id: str, min_gap: Optional[timedelta] = None) -> PollResult:
        """Poll one connection now (unless another process holds its lock, or polled it recently).

        Every statement of the poll runs on the pooled connection that holds the lock.
        """
        result = PollResult(connection_id)
        async with self.store.poll_lock(connection_id) as conn:
            if conn is None:
                result.locked_out = True
                log.info('calendly connection %s: another process is polling it; skipped', connection_id)
                return result
            connection = await self.store.get(connection_id, conn)   # read after the lock: fresh watermark
            if connection is None or connection.status != ACTIVE:
                return result
            started = datetime.now(timezone.utc)
            if min_gap is not None and connection.last_poll_at is not None \
                    and started - connection.last_poll_at < min_gap:
                result.recent = True
                log.debug('calendly connection %s: polled %s ago; skipped', connection_id,
                          started - connection.last_poll_at)
                return result
            result.polled = True
            try:
                await self._poll(connection, result, conn)
            except Unauthorized as exc:
                result.error = str(exc)
                log.error('calendly connection %s: token refused (%s); marked needs_reauth, '
                          'reconnect it with `crm-realtime calendly connect`', connection_id, exc)
                await self.store.mark_needs_reauth(connection_id, result.error, conn)
                await self._on_reauth()
                return result
            except (CalendlyError, bk.BookingError, ValueError) as exc:
                result.error = f'{exc.__class__.__name__}: {exc}'
            except Exception as exc:  # noqa: BLE001 - database or mapping trouble; keep the watermark
                result.error = log_text(exc)
                log.debug('calendly connection %s: poll failure', connection_id, exc_info=exc)
            if result.error:
                log.warning('calendly connection %s: poll stopped (%s); watermark kept', connection_id,
                            result.error)
            await self.store.finish_poll(connection_id, started, result.error, conn)
            if not result.error:
                log.info('calendly connection %s: polled %d events, fetched %d, %d bookings applied',
                         connection_id, result.events, result.events_fetched, result.applied)
        return result

    async def _poll(self, connection: Connection, result: PollResult, conn) -> None:
        client = self._client_for(self.store.token(connection))
        since = connection.watermark - self._lookback
        seen = await self.store.seen_events(connection.id, conn)
        failed = 0
        scope = {'organization': connection.subject} if connection.scope == 'organization' \
            else {'user': connection.subject}
        async for event in client.scheduled_events(
                min_start_time=since.strftime('%Y-%m-%dT%H:%M:%S.%fZ'), count=self.page_size, **scope):
            result.events += 1
            fp = fingerprint(event)
            if seen.get(event.get('uri')) == fp:
                continue
            result.events_fetched += 1
            invitees = await client.invitees(event['uri'], count=self.page_size)
            ok = True
            for invitee in invitees:
                try:
                    bookings = bk.from_poll(invitee, event)
                except bk.BookingError as exc:
                    # one unreadable invitee must not stop the others; it is retried next poll
                    log.warning('calendly connection %s: invitee %s skipped: %s', connection.id,
                                invitee.get('uri'), exc)
                    ok = False
                    continue
                for booking in bookings:
                    outcome = await self._apply(connection, booking, 'poll', conn)
                    result.bookings += 1
                    result.applied += outcome.outcome != 'duplicate'
            if ok:
                await self.store.mark_event_seen(connection.id, event['uri'], fp,
                                                 bk.parse_time(event['start_time']), conn)
            else:
                failed += 1
        await self.store.forget_events_before(connection.id, since, conn)
        if failed:
            raise bk.BookingError(f'{failed} event(s) had unreadable invitees')
