"""The LISTEN side: one dedicated PostgreSQL connection that wakes the sidecar.

Failure policy (what happens when the listener dies):

* The connection is dedicated (autocommit, ``LISTEN crm_realtime``) and also
  reads the journal, so a notification can never race the read it triggers:
  notifications that arrive during a read are kept by psycopg and seen next.
* A NOTIFY is only a wake-up; the journal is the truth. After every wake-up,
  and after ``listener_check_seconds`` without one, the journal is read from
  the last snapshot position, so a lost notification delays an event by at
  most that interval and never loses it.
* Liveness: when idle, the connection is probed with ``SELECT 1`` bounded by
  ``listener_timeout_seconds`` (a blocked ``notifies()`` never returns on its
  own when a backend stops answering without closing); reads are bounded too.
  TCP keepalives are on as a second line.
* Any error or timeout closes the connection, sets ``ready`` to False (so
  ``/readyz`` answers 503), and reconnects after a jittered exponential
  backoff capped at ``listener_max_backoff_seconds``. On reconnect it reads the
  journal from the position it had, so every change committed while it was down
  is delivered, once, in commit order. Nothing is written to the CRM's tables,
  and the CRM's writes never wait for us: NOTIFY does not block on listeners.
* Only ``stop()`` ends the loop; the process stays up and keeps retrying.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, List, Optional

import psycopg

from . import journal
from .events import Change

log = logging.getLogger('crm_realtime.listener')

CHANNEL = 'crm_realtime'

def _swallow(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _drain(conn: psycopg.AsyncConnection) -> bool:
    """Take the notifications that can be had without waiting; True if there were any."""
    got = False
    async for _ in conn.notifies(timeout=0):
        got = True
    return got


OnChanges = Callable[[str, str, List[Change]], Awaitable[None]]


class Listener:
    def __init__(self, settings, *, metrics=None):
        self._url = settings.database_url
        self._check = settings.listener_check_seconds
        self._timeout = settings.listener_timeout_seconds
        self._max_backoff = settings.listener_max_backoff_seconds
        self._on_changes: Optional[OnChanges] = None
        self._metrics = metrics
        self._conn: Optional[psycopg.AsyncConnection] = None
        self._stopping = False
        self._wake = asyncio.Event()
        self.ready = False
        self.position: Optional[str] = None     # snapshot everything before which was dispatched
        self.reconnects = 0
        self.last_error: Optional[str] = None
        self._advanced = asyncio.Event()
        self._readable: Optional[asyncio.Future] = None   # what _notified sleeps on

    async def wait_advanced(self, timeout: float) -> bool:
        """Wait until the next journal read completes; False on timeout."""
        event = self._advanced
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self, on_changes: OnChanges) -> None:
        """Read the journal until ``stop()``, handing every batch to ``on_changes``."""
        self._on_changes = on_changes
        attempt, delay = 0, 0.0
        while not self._stopping:
            try:
                await self._connect()
                attempt = 0
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is handled the same way
                if self._stopping:
                    break
                self.ready = False
                self.reconnects += 1
                if self._metrics:
                    self._metrics.listener_reconnects.inc()
                self.last_error = f'{exc.__class__.__name__}: {exc}'.strip()
                delay = min(self._max_backoff, 0.25 * 2 ** attempt) * random.uniform(0.5, 1.0)
                attempt = min(attempt + 1, 16)
                log.warning('listener connection lost (%s); reconnecting in %.2fs',
                            self.last_error, delay)
            finally:
                await self._close()
            if not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay if attempt else 0.0)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        self.ready = False

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._readable is not None:
            _resolve(self._readable)
        await self._close()

    async def _connect(self) -> None:
        self._conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name='crm-realtime listener',
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            connect_timeout=max(2, int(self._timeout))), timeout=self._timeout + 2)
        conn = self._conn
        await self._bounded(conn.execute(f'LISTEN "{CHANNEL}"'))
        if self.position is None:
            self.position = await self._bounded(journal.current_snapshot(conn))
        self.ready = True
        log.info('listening on channel %s', CHANNEL)

    async def _serve(self) -> None:
        conn = self._conn
        await self._read()          # catch up on whatever committed while we were away
        while not self._stopping:
            woke = await self._notified(conn, self._check)
            if self._stopping:
                return
            if not woke:
                await self._bounded(conn.execute('SELECT 1'))
            await self._read()

    async def _notified(self, conn: psycopg.AsyncConnection, timeout: float) -> bool:
        """True when a notification (or anything else from the server) came within ``timeout``.

        Not ``conn.notifies(timeout=...)``: while it waits, psycopg wakes every
        100 ms to poll its socket, ten times a second on an idle sidecar. Here
        the notifications psycopg already holds (those that arrived during the
        last read) are taken without waiting; otherwise the task sleeps until
        the socket is readable, ``stop()`` is called, or ``timeout`` passes.
        A closed or broken connection shows up as readable, and the drain
        that follows raises, which the run loop handles.
        """
        if await _drain(conn):
            return True
        loop = asyncio.get_running_loop()
        readable = self._readable = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _resolve, readable)
        try:
            await asyncio.wait_for(readable, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._readable = None
            loop.remove_reader(fd)
        if self._stopping:
            return False
        await _drain(conn)
        return True

    async def _read(self) -> None:
        before = self.position
        # A long catch-up may legitimately take longer than a probe.
        after, changes = await self._bounded(journal.read_since(self._conn, before),
                                             self._timeout * 6)
        if changes:
            await self._on_changes(before, after, changes)
        self.position = after
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _bounded(self, aw, timeout=None):
        """Await ``aw`` for at most ``timeout``; past it, drop the connection.

        Not ``asyncio.wait_for``: cancelling a psycopg query sends a cancel
        request down the same path that stopped answering and waits for it.
        The connection is closed under the abandoned operation instead, and
        the operation is left to fail on its own.
        """
        task = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout or self._timeout)
        except asyncio.CancelledError:
            # stopping: stop() closed the connection under the operation, which
            # fails after we are gone; collect that failure (no "never retrieved")
            task.add_done_callback(_swallow)
            raise
        if task in done:
            return task.result()
        task.add_done_callback(_swallow)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pgconn.finish()        # frees the socket at once; no round trip
        task.cancel()
        raise TimeoutError(f'PostgreSQL did not answer within {timeout or self._timeout:g}s')

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except Exception:  # noqa: BLE001 - a dead connection may fail to close politely
                pass

