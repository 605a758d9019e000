"""The Calendly feature as the sidecar loads it (``Sidecar._load_components``).

``Calendly(settings)`` builds the parts (connection store, CRM writer, HTTP
client, poller) on a small pool of its own and is what the CLI uses;
``CalendlyComponent(sidecar)`` builds them on the sidecar's one psycopg pool
(grown by the poll's concurrency at start, since each running poll holds a
connection) and adds the webhook route, the scheduled poll and the metrics.

Calendly is optional. At start-up, and after each scheduled poll, the
component checks what the database role can see: without read access to
``crm_realtime.calendly_connection`` (a role with only the realtime grants of
``sql/README.md``), or with no connection yet, Calendly is off - one INFO
line says so and how to turn it on, and polls stay silent until it is on.

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

import psycopg
from prometheus_client import Counter
from psycopg_pool import AsyncConnectionPool
from tornado.httpclient import AsyncHTTPClient

from . import booking as bk
from .client import CalendlyClient, RetryPolicy
from .crm import CrmWriter, Outcome
from .poller import POLL_CONCURRENCY, Poller
from .store import Connection, Store, log_text, make_pool
from .web import ROUTE, CalendlyWebhookHandler

log = logging.getLogger('crm_realtime.calendly')

#: A webhook must be answered within Calendly's 15 s read timeout: one quick try.
WEBHOOK_POLICY = RetryPolicy(attempts=2, backoff_base=0.5, max_rate_wait=0, connect_timeout=3,
                             request_timeout=5)


def webhook_path(connection_id: str) -> str:
    return f'/webhooks/calendly/{connection_id}'


class Calendly:
    """The Calendly parts, built from settings (no routes, no schedule)."""

    def __init__(self, settings, *, pool: Optional[AsyncConnectionPool] = None, on_applied=None,
                 on_reauth=None, retry_policy: RetryPolicy = RetryPolicy(), page_size: int = 100):
        self.settings = settings
        self._own_pool = pool is None
        self.pool = make_pool(settings.database_url) if pool is None else pool
        self.store = Store(self.pool, settings.calendly_encryption_key)
        self.writer = CrmWriter(self.pool, settings.calendly_prospect_status)
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

    async def open(self) -> None:
        """Open the pool of its own (CLI, demo set-up); a database error raises psycopg's now."""
        if self._own_pool:
            # one plain connection first: a wrong URL or a refused role fails at
            # once with PostgreSQL's own message instead of a pool timeout
            conn = await psycopg.AsyncConnection.connect(self.settings.database_url, connect_timeout=10)
            await conn.close()
            await self.pool.open(wait=False)

    async def apply(self, connection: Connection, booking: bk.Booking, via: str, conn=None) -> Outcome:
        outcome = await self.writer.apply(connection.organization_id, booking, via=via,
                                          connection_id=connection.id, conn=conn)
        if self._on_applied is not None:
            self._on_applied(via, outcome)
        return outcome

    async def already_applied(self, organization_id: str, kind: str, invitee_uri: str) -> bool:
        return await self.store.already_applied(organization_id, kind, invitee_uri)

    async def fetch_scheduled_event(self, connection: Connection, event_uri: str):
        client = self.client(self.store.token(connection), WEBHOOK_POLICY)
        return await client.scheduled_event(event_uri)

    async def _reauth(self) -> None:
        if self._on_reauth is not None:
            await self._on_reauth()

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._own_pool:
            await self.pool.close()


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
        self._logged_state: Optional[str] = None      # see check_state()
        super().__init__(sidecar.settings, pool=sidecar.pool, on_applied=self._count,
                         on_reauth=self.refresh_gauge)

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
        # once at start-up: room in the pool, the state logged, the gauge right before the first poll
        scheduler.add_job(self.start, id='calendly-start')

    async def start(self) -> None:
        # each running poll holds one pooled connection (its lock) for its whole run
        await self.pool.resize(self.pool.min_size, self.pool.max_size + POLL_CONCURRENCY)
        try:
            if await self.check_state() == 'on':
                await self.refresh_gauge()
        except asyncio.CancelledError:
            return      # stopped right after start

    async def check_state(self) -> Optional[str]:
        """'on', 'off' (nothing for Calendly to do, or this role may not see it), or None when
        the database cannot be asked. Logs a line whenever the state changes."""
        try:
            async with self.pool.connection(timeout=10) as conn:
                cur = await conn.execute(
                    "SELECT CASE WHEN pg_catalog.to_regclass('crm_realtime.calendly_connection') IS NULL "
                    "THEN NULL ELSE pg_catalog.has_table_privilege("
                    "'crm_realtime.calendly_connection', 'SELECT') END")
                readable = (await cur.fetchone())[0]
                count = await self.store.count(conn=conn) if readable else 0
        except Exception as exc:  # noqa: BLE001 - database down: the listener reports it too
            log.warning('calendly: cannot check whether Calendly is set up (%s); next check in %s s',
                        log_text(exc), self.settings.calendly_poll_seconds)
            return None
        if readable is None:
            state, text = 'off', ('calendly: off (crm_realtime.calendly_connection does not exist; '
                                  'run sql/install.sql to install it)')
        elif not readable:
            state, text = 'off', ('calendly: off (this database role may not read '
                                  'crm_realtime.calendly_connection); to turn it on, give the role the '
                                  'Calendly grants of sql/README.md and run `crm-realtime calendly connect`')
        elif count == 0:
            state, text = 'off', ('calendly: off (no Calendly connection yet); '
                                  '`crm-realtime calendly connect` turns it on')
        else:
            state, text = 'on', f'calendly: on ({count} connection{"s" if count > 1 else ""})'
            if not self.settings.calendly_encryption_key:
                text += ('; but SIDECAR_CALENDLY_ENCRYPTION_KEY is not set, so webhooks answer 503 '
                         'and polls fail until it is set to the key the connections were stored with')
        if text != self._logged_state:
            log.log(logging.ERROR if 'not set' in text else logging.INFO, '%s', text)
            self._logged_state = text
        return state

    async def poll_all(self) -> None:
        """The scheduled job: never raises (a failing run is logged and retried next interval).

        A run that fails because Calendly is not set up for this role (its table
        unreadable or missing) stays quiet: check_state() said so once, at INFO.
        """
        try:
            try:
                # another replica's run inside this window counts as ours
                gap = timedelta(seconds=0.8 * self.settings.calendly_poll_seconds)
                results = await self.poller.poll_all(min_gap=gap)
            except Exception:  # noqa: BLE001 - sorted out just below
                if await self.check_state() == 'off':
                    return
                raise
        except asyncio.CancelledError:
            # shutdown: each booking is its own transaction and the watermark
            # moves only after a complete poll, so the next start redoes this one
            log.info('calendly poll run interrupted by shutdown; it resumes from the saved watermark')
            return
        except Exception as exc:  # noqa: BLE001 - e.g. database down
            log.error('calendly poll run failed (%s); next run in %s s', log_text(exc),
                      self.settings.calendly_poll_seconds)
            log.debug('calendly poll run failure', exc_info=exc)
            self.polls_counter.labels('failed').inc()
            return
        for r in results:
            self.polls_counter.labels('skipped' if r.locked_out or r.recent else 'failed' if r.error else 'ok').inc()
        try:
            await self.check_state()       # "on (N connections)" or "off (no connection yet)" when it changes
        except asyncio.CancelledError:
            return
        await self.refresh_gauge()

    async def refresh_gauge(self) -> None:
        try:
            self.reauth_gauge.set(await self.store.count_needing_reauth())
        except asyncio.CancelledError:
            return      # shutdown; the gauge goes with the process
        except Exception as exc:  # noqa: BLE001
            log.warning('calendly: cannot count connections needing re-authorisation: %s', log_text(exc))

    def _count(self, via: str, outcome: Outcome) -> None:
        self.bookings_counter.labels(via, outcome.outcome).inc()
