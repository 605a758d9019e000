"""The Calendly feature as the sidecar loads it (``Sidecar._load_components``).

``Calendly(settings)`` builds the parts (database engine, connection store,
CRM writer, HTTP client, poller) and is what the CLI uses too;
``CalendlyComponent(sidecar)`` adds the webhook route, the scheduled poll and
the metrics.

Schedule: one APScheduler job, every ``SIDECAR_CALENDLY_POLL_SECONDS`` plus a
random jitter of up to 10 %, polls every active connection (``poller.py``).
``max_instances=1`` keeps a slow run from overlapping the next in one process;
the advisory lock keeps replicas from polling one connection at once.
Without ``SIDECAR_CALENDLY_ENCRYPTION_KEY`` the realtime core runs as usual
and every Calendly path reports the missing key instead of failing silently.
"""
from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta, timezone
from typing import Optional

from prometheus_client import Counter
from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient

from . import booking as bk
from .client import CalendlyClient, RetryPolicy
from .crm import CrmWriter, Outcome
from .poller import Poller
from .store import Connection, Store, booking_table, log_text, make_engine
from .web import ROUTE, CalendlyWebhookHandler

log = logging.getLogger('crm_realtime.calendly')

#: A webhook must be answered within Calendly's 15 s read timeout: one quick try.
WEBHOOK_POLICY = RetryPolicy(attempts=2, backoff_base=0.5, max_rate_wait=0, connect_timeout=3,
                             request_timeout=5)


def webhook_path(connection_id: str) -> str:
    return f'/webhooks/calendly/{connection_id}'


class Calendly:
    """The Calendly parts, built from settings (no routes, no schedule)."""

    def __init__(self, settings, *, on_applied=None, on_reauth=None,
                 retry_policy: RetryPolicy = RetryPolicy(), page_size: int = 100):
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.store = Store(self.engine, settings.database_url, settings.calendly_encryption_key)
        self.writer = CrmWriter(self.engine, settings.calendly_prospect_status)
        self.retry_policy = retry_policy
        self._http: Optional[AsyncHTTPClient] = None
        self._on_applied = on_applied
        self._on_reauth = on_reauth
        self.poller = Poller(self.store, self.writer, self.client,
                             lookback=timedelta(hours=settings.calendly_lookback_hours),
                             apply=self.apply, on_reauth=self._reauth, page_size=page_size)

    @property
    def http(self) -> AsyncHTTPClient:
        if self._http is None:
            # our own instance: closing it must not close the IOLoop's shared one
            self._http = AsyncHTTPClient(force_instance=True)
        return self._http

    def client(self, token: str, policy: Optional[RetryPolicy] = None) -> CalendlyClient:
        return CalendlyClient(self.http, self.settings.calendly_api_url, token,
                              policy=policy or self.retry_policy)

    def webhook_url(self, connection_id: str) -> Optional[str]:
        base = self.settings.public_url.rstrip('/')
        return base + webhook_path(connection_id) if base else None

    async def apply(self, connection: Connection, booking: bk.Booking, via: str) -> Outcome:
        outcome = await self.writer.apply(connection.organization_id, booking, via=via,
                                          connection_id=connection.id)
        if self._on_applied is not None:
            self._on_applied(via, outcome)
        return outcome

    async def already_applied(self, organization_id: str, kind: str, invitee_uri: str) -> bool:
        c = booking_table.c
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(c.outcome).where(
                c.organization_id == organization_id, c.kind == kind, c.invitee_uri == invitee_uri,
                c.outcome != 'pending'))).first()
        return row is not None

    async def fetch_scheduled_event(self, connection: Connection, event_uri: str):
        client = self.client(self.store.token(connection), WEBHOOK_POLICY)
        return await client.scheduled_event(event_uri)

    async def _reauth(self) -> None:
        if self._on_reauth is not None:
            await self._on_reauth()

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
        await self.engine.dispose()


class CalendlyComponent(Calendly):
    """Webhook route, scheduled poll and metrics inside a running sidecar."""

    def __init__(self, sidecar):
        registry = sidecar.metrics.registry
        self.bookings_counter = Counter(
            'crm_realtime_calendly_bookings', 'Calendly bookings handled, by path and outcome',
            ['via', 'outcome'], registry=registry)
        self.polls_counter = Counter(
            'crm_realtime_calendly_polls', 'Calendly connection polls, by result', ['result'],
            registry=registry)
        self.reauth_gauge = sidecar.metrics.calendly_connections_needing_reauth
        super().__init__(sidecar.settings, on_applied=self._count, on_reauth=self.refresh_gauge)

    def routes(self):
        return [(ROUTE, CalendlyWebhookHandler, {'component': self})]

    def schedule(self, scheduler) -> None:
        seconds = self.settings.calendly_poll_seconds
        # The first run comes soon after start-up (spread so replicas restarted
        # together do not poll at once): a restart must not wait a whole
        # interval to catch up on bookings whose webhooks were lost meanwhile.
        spread = min(self.settings.calendly_first_poll_seconds, seconds)
        first = datetime.now(timezone.utc) + timedelta(seconds=random.uniform(5, spread))
        scheduler.add_job(self.poll_all, 'interval', seconds=seconds, jitter=max(1, seconds // 10),
                          id='calendly-poll', max_instances=1, coalesce=True, next_run_time=first)
        # once at start-up, so the gauge is right before the first poll
        scheduler.add_job(self.refresh_gauge, id='calendly-reauth-gauge')

    async def poll_all(self) -> None:
        """The scheduled job: never raises (a failing run is logged and retried next interval)."""
        try:
            results = await self.poller.poll_all()
        except asyncio.CancelledError:
            # shutdown: each booking is its own transaction and the watermark
            # moves only after a complete poll, so the next start redoes this one
            log.info('calendly poll run interrupted by shutdown; it resumes from the saved watermark')
            return
        except Exception as exc:  # noqa: BLE001 - e.g. database down, tables not installed
            log.error('calendly poll run failed (%s); next run in %s s', log_text(exc),
                      self.settings.calendly_poll_seconds)
            log.debug('calendly poll run failure', exc_info=exc)
            self.polls_counter.labels('failed').inc()
            return
        for r in results:
            self.polls_counter.labels('skipped' if r.locked_out else 'failed' if r.error else 'ok').inc()
        await self.refresh_gauge()

    async def refresh_gauge(self) -> None:
        try:
            self.reauth_gauge.set(await self.store.count_needing_reauth())
        except Exception as exc:  # noqa: BLE001
            log.warning('calendly: cannot count connections needing re-authorisation: %s',
                        exc.__class__.__name__)

    def _count(self, via: str, outcome: Outcome) -> None:
        self.bookings_counter.labels(via, outcome.outcome).inc()
