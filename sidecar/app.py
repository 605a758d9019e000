"""Assemble one sidecar: HTTP routes, Socket.IO, the listener and scheduled jobs.

``Sidecar(settings)`` builds everything from a ``Settings``; ``start()`` binds
the port and starts the listener and the scheduler; ``stop()`` undoes it.
Tests build their own ``Sidecar`` the same way ``crm-realtime serve`` does.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from datetime import timedelta
from typing import List, Optional

import tornado.httpserver
import tornado.netutil
import tornado.web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from psycopg_pool import AsyncConnectionPool

from .client_bundle import client_route
from .listener import Listener
from .metrics import Metrics
from .realtime import Realtime
from .recovery import Replayer
from .wire import add_guarded_sockets, close_websockets

log = logging.getLogger('crm_realtime.app')


class _Base(tornado.web.RequestHandler):
    def initialize(self, sidecar):
        self.sidecar = sidecar

    def set_default_headers(self):
        self.set_header('Cache-Control', 'no-store')


class HealthHandler(_Base):
    """Process is up and serving HTTP."""
    def get(self):
        self.write({'status': 'ok'})


class ReadyHandler(_Base):
    """200 only while the LISTEN connection is active and the sidecar is not draining."""
    def get(self):
        listener = self.sidecar.listener
        if self.sidecar.draining:
            self.set_status(503)
            self.write({'status': 'draining'})
        elif listener.ready:
            body = {'status': 'ready'}
            if listener.mapping_problems:       # degraded capture (crm_realtime.mapping_status)
                body['warnings'] = listener.mapping_problems
            self.write(body)
        else:
            self.set_status(503)
            self.write({'status': 'not ready', 'listener': 'down',
                        'last_error': listener.last_error})


class MetricsHandler(_Base):
    async def get(self):
        await self.sidecar.refresh_gauges()
        self.set_header('Content-Type', self.sidecar.metrics.content_type)
        self.write(self.sidecar.metrics.render())


class CursorHandler(_Base):
    """The live stream position, for ``auth.since`` (read it before fetching the list)."""
    async def get(self):
        cursor = await self.sidecar.realtime.fresh_cursor()
        if cursor is None:
            self.set_status(503)
            self.write({'error': 'the change stream is not available yet'})
        else:
            self.write({'cursor': cursor})


def _access_log(handler) -> None:
    """tornado's access log without query strings: they may carry a token or a session id."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    logging.getLogger('tornado.access').log(
        level, '%d %s %s (%s) %.2fms', status, request.method, request.path,
        request.remote_ip, 1000.0 * request.request_time())


class Jobs:
    """The scheduler as the sidecar and its components use it: every run of a job is tracked.

    ``stop()`` ends the runs still going (a poll, a prune, the start-up check)
    while the event loop still runs, so a query they were in is cancelled
    cleanly instead of being cut when the loop closes (which made psycopg log
    "query cancellation interrupted" on a Ctrl-C right after start).
    """

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self._running = set()
        self._stopping = False

    def add_job(self, func, *args, **kwargs):
        @functools.wraps(func)
        async def tracked(*a, **kw):
            if self._stopping:      # submitted just before stop(): nothing to do
                return None
            task = asyncio.current_task()
            self._running.add(task)
            try:
                return await func(*a, **kw)
            except asyncio.CancelledError:
                if self._stopping:
                    return None
                raise
            finally:
                self._running.discard(task)
        return self.scheduler.add_job(tracked, *args, **kwargs)

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        running_scheduler = self.scheduler.running
        if running_scheduler:
            # No new runs; then let a run the scheduler already submitted take its first
            # step (it sees _stopping and returns): the scheduler's shutdown cancels a run
            # that has not started, and APScheduler logs that as a failed job, traceback
            # and all.
            self.scheduler.pause()
            for _ in range(3):
                await asyncio.sleep(0)
        running = [t for t in self._running if not t.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout)
        if running_scheduler:
            self.scheduler.shutdown(wait=False)
            await asyncio.sleep(0)      # AsyncIOScheduler shuts down on the loop's next step


class Sidecar:
    def __init__(self, settings):
        self.settings = settings
        self.metrics = Metrics()
        # a few connections for recovery reads, metrics and the journal prune;
        # each is checked before use, so a backend killed under the pool (a
        # restart, a failover, an idle killer) is replaced instead of failing a read
        self.pool = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=settings.recovery_readers + 2, open=False,
            name='crm-realtime', check=AsyncConnectionPool.check_connection,
            kwargs={'autocommit': True, 'application_name': 'crm-realtime'})
        self.replayer = Replayer(self.pool, self.metrics)
        self.listener = Listener(settings, metrics=self.metrics)
        self.realtime = Realtime(settings, self.metrics, self.listener, self.replayer)
        self.scheduler = AsyncIOScheduler()
        self.jobs = Jobs(self.scheduler)
        self.components: List[object] = []
        self.app = tornado.web.Application(
            self._routes(), log_function=_access_log,
            websocket_max_message_size=settings.max_http_buffer_bytes)
        self._server: Optional[tornado.httpserver.HTTPServer] = None
        self._accept_guards: list = []
        self._listener_task: Optional[asyncio.Task] = None
        self._stopped = False
        self.draining = False
        self.port: Optional[int] = None

    def _routes(self):
        ctx = {'sidecar': self}
        routes = [
            (r'/healthz', HealthHandler, ctx),
            (r'/readyz', ReadyHandler, ctx),
            (r'/metrics', MetricsHandler, ctx),
            (r'/cursor', CursorHandler, ctx),
            client_route('/client/'),
        ]
        for component in self._load_components():
            self.components.append(component)
            routes.extend(component.routes())
        routes.append((r'/socket.io/', self.realtime.websocket_handler))
        return routes

    def _load_components(self):
        """Features that add routes and jobs of their own (see sidecar/calendly)."""
        from .calendly.component import CalendlyComponent
        return [CalendlyComponent(self)]

    async def start(self) -> None:
        # a second line behind the per-route limits: no route reads a body bigger than this
        body_cap = max(self.settings.max_http_buffer_bytes, self.settings.calendly_webhook_max_bytes)
        self._server = tornado.httpserver.HTTPServer(self.app, xheaders=True,
                                                     max_body_size=body_cap + 65536)
        sockets = tornado.netutil.bind_sockets(self.settings.port, self.settings.host)
        self._accept_guards = add_guarded_sockets(self._server, sockets,
                                                  on_exhausted=self.metrics.accept_paused.inc)
        self.port = sockets[0].getsockname()[1]
        await self.pool.open(wait=False)
        self._listener_task = asyncio.ensure_future(self.listener.run(self.realtime.on_changes))
        path = self.realtime.wire_path
        self.metrics.wire_path.labels(path.name).set(1)
        if path.direct:
            log.info('wire: direct fan-out path (frames written to sockets)')
        else:
            log.warning('wire: public engine.io path (slower); the installed libraries differ '
                        'from the checked ones in: %s', '; '.join(path.problems))
        self.jobs.add_job(self.prune_journal, 'interval', minutes=10, id='journal-prune',
                               max_instances=1, coalesce=True)
        for component in self.components:
            component.schedule(self.jobs)
        self.scheduler.start()
        log.info('serving on http://%s:%s', self.settings.host, self.port)

    async def drain(self) -> None:
        """Turn /readyz to 503 and wait SIDECAR_DRAIN_SECONDS; stop() comes next.

        A load balancer that health-checks /readyz takes the replica out during
        the wait and sends new clients elsewhere; connected clients are served
        until stop() closes their sockets, and then reconnect (through the
        balancer, to another replica) and recover what they missed.
        """
        self.draining = True
        seconds = self.settings.drain_seconds
        log.info('draining: /readyz answers 503; closing the sockets in %g s', seconds)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.jobs.stop()
        if self._server is not None:
            self._server.stop()
            for guard in self._accept_guards:
                guard.cancel()
        await self.listener.stop()
        if self._listener_task is not None:
            self._listener_task.cancel()
            try:
                await self._listener_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        # Close every client at the Engine.IO level: they see "transport close"
        # and reconnect (to the restarted process or another replica) with
        # their pid and offset, so they recover what they miss in between.
        await self.realtime.sio.eio.close_all()
        close_websockets(self.realtime.websocket_handler)
        await self.realtime.sio.shutdown()
        for component in self.components:
            await component.close()
        await self.pool.close()

    async def prune_journal(self) -> int:
        keep = timedelta(hours=self.settings.journal_retention_hours)
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute('SELECT "crm_realtime"."prune"(%s)', (keep,))
                deleted = (await cur.fetchone())[0]
        except asyncio.CancelledError:
            # shutdown: prune is one statement, rolled back whole; the next run redoes it
            log.info('journal prune interrupted by shutdown')
            return 0
        if deleted:
            log.info('pruned %d journal rows older than %s', deleted, keep)
        return deleted

    async def refresh_gauges(self) -> None:
        self.metrics.listener_up.set(1 if self.listener.ready else 0)
        self.metrics.recovering_clients.set(self.realtime.recovery.holding)
        try:
            async with self.pool.connection(timeout=2) as conn:
                cur = await conn.execute('SELECT pg_catalog.pg_notification_queue_usage()')
                self.metrics.notify_queue_usage.set((await cur.fetchone())[0])
        except Exception as exc:  # noqa: BLE001 - /metrics answers even without a database
            log.warning('metrics: cannot read notification queue usage: %s', exc.__class__.__name__)
