"""The LISTEN side: one dedicated PostgreSQL connection that wakes the sidecar.

Failure policy (what happens when the listener dies):

* The connection is dedicated (autocommit, ``LISTEN crm_realtime``) and also
  reads the journal, so a notification can never race the read it triggers:
  notifications that arrive during a read are kept and seen next. Its queries
  run through ``pgchannel.Channel`` (libpq's asynchronous API, one reader on
  the socket, text rows), not psycopg's ``execute``: about half the client CPU
  per read, which is the listener's fixed cost per event.
* A NOTIFY is only a wake-up; the journal is the truth. After every wake-up,
  and after ``listener_check_seconds`` without one, the journal is read from
  the last snapshot position, so a lost notification delays an event by at
  most that interval and never loses it.
* Liveness: when idle, the connection is probed with ``SELECT 1`` bounded by
  ``listener_timeout_seconds`` (a wait for a notification never ends on its
  own when a backend stops answering without closing); every query is bounded
  too (the channel's timer closes the connection under it).
  TCP keepalives are on as a second line.
* Any error or timeout closes the connection, sets ``ready`` to False (so
  ``/readyz`` answers 503), and reconnects after a jittered exponential
  backoff capped at ``listener_max_backoff_seconds``. On reconnect it reads the
  journal from the position it had, so every change committed while it was down
  is delivered, once, in commit order. Nothing is written to the CRM's tables,
  and the CRM's writes never wait for us: NOTIFY does not block on listeners.
* Only ``stop()`` ends the loop; the process stays up and keeps retrying.
  The backoff grows until a journal read succeeds, so a database where the
  DBA step is missing (no ``crm_realtime`` schema, a missing grant) is retried
  at the cap, and ``last_error`` (shown by ``/readyz``) and the log say in one
  sentence what to run (``hint``).

Wake-ups without a NOTIFY per commit (see the notify block of sql/install.sql):

* A listener waiting for a NOTIFY holds advisory lock ``LOCK_KEY`` in shared
  mode; writing transactions notify only when some listener holds it (with no
  sidecar connected nobody is waiting: it reads everything when it connects).
  A notifying commit takes a cluster-wide lock through its WAL flush, so
  notifying transactions commit one at a time; skipping NOTIFY while we are
  reading anyway keeps the CRM's group commit.
* When a read after a wake-up finds changes while transactions that began
  since the previous read are in progress, the CRM is busy writing: the listener starts *following*. It
  releases the lock (writers stop notifying it) and reads again after a delay
  between ``follow_min_seconds`` and ``follow_max_seconds``: doubled while reads
  find fewer than ``follow_batch`` changes, halved when they find four times
  that, so a read carries a few changes without adding more than the maximum. A writer that skipped its NOTIFY had its transaction id before it
  probed the lock, so any read taken after that probe has its rows or lists it
  in progress.
* After ``follow_empty_reads`` reads in a row that find nothing, it takes the
  lock back (writers notify again), reads once more, and keeps *watching* the
  transactions that read lists in progress (any of them may have skipped its
  NOTIFY while the lock was released): it reads again after
  ``follow_max_seconds``, doubling to ``watch_max_seconds``, until every one
  of them has ended. New transactions are not watched: they notify. So no
  change waits for the idle timer; an idle CRM costs no reads; and replicas
  each hold the lock while idle, so each idle one is woken.
* Reads carry only what somebody needs. The sidecar tells the listener which
  organizations have a socket in their rooms or on hold for recovery
  (``interest``); a read returns only their rows (plus how many rows the range
  holds in all, the "CRM is busy" signal above), so the other rows never cross
  the wire or become Python objects. The snapshot position advances all the
  same, so nothing is skipped for a client that comes later: it recovers from
  the journal. An organization that gains its first socket while a read that
  left it out is in flight has the same range read for it before the batch is
  dispatched (``journal.read_between``), so that socket misses nothing.
* Dormant while nobody is interested: the lock is released (writers do not
  notify), nothing is read, and only the liveness probe runs every
  ``listener_check_seconds``. A NOTIFY (a recovery check on this replica) or
  ``fresh()`` (a socket connecting, ``GET /cursor``) moves the position to the
  current snapshot with one snapshot-only query, so a client connecting after
  a quiet hour does not start an hour back. When the first socket joins or is
  held (``wake()``), the listener takes the lock and reads at once (writers
  that skipped their NOTIFY meanwhile are in that read or in its in-progress
  list, which it watches as above), so the first change after a dormant period
  never waits for the idle timer.
* Every ``mapping_check_seconds`` it reads ``crm_realtime.mapping_status``:
  ``mapping_problems`` (one sentence each) is what /readyz shows and the log
  warns about when it changes; gauge ``crm_realtime_mapping_problems``.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Awaitable, Callable, Collection, Dict, List, Optional, Tuple

import psycopg

from . import journal
from .events import Change
from .pgchannel import Channel

log = logging.getLogger('crm_realtime.listener')

CHANNEL = 'crm_realtime'
#: advisory lock (two int4 keys) a waiting listener holds in shared mode;
#: sql/install.sql's trigger functions notify only while one does. Per database.
LOCK_KEY = (1668443506, 1)

MAPPING_SQL = ('SELECT "detail" FROM "crm_realtime"."mapping_status" '
               'WHERE "state" <> \'ok\' ORDER BY 1')


def _xmax(snapshot: str) -> int:
    """The xmax of a pg_snapshot text: every transaction id at or above it began after it."""
    return int(snapshot.split(':', 2)[1])


def _in_progress(snapshot: str) -> Tuple[int, ...]:
    """The in-progress transaction ids of a pg_snapshot text (``xmin:xmax:xip,...``)."""
    xip = snapshot.rsplit(':', 1)[1]
    return tuple(int(x) for x in xip.split(',')) if xip else ()


def explain(exc: BaseException, database: str, role: str) -> Optional[str]:
    """One sentence naming the DBA step that fixes ``exc``, when it is a setup problem."""
    text = str(exc)
    if isinstance(exc, psycopg.errors.UndefinedFunction) and 'crm_realtime.expand' in text:
        return (f'the crm_realtime schema in database "{database}" is older than this sidecar (no '
                f'crm_realtime.expand): as the DBA, run sql/install.sql again (psql -v ON_ERROR_STOP=1 '
                f'-d {database} -f sql/install.sql) or crm-realtime install-sql')
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName,
                        psycopg.errors.UndefinedFunction)) and 'crm_realtime' in text:
        return (f'the crm_realtime schema is not installed in database "{database}": as the DBA, run '
                f'sql/install.sql (psql -v ON_ERROR_STOP=1 -d {database} -f sql/install.sql) '
                f'or crm-realtime install-sql')
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        if 'schema crm_realtime' in text:
            grant = f'GRANT USAGE ON SCHEMA crm_realtime TO "{role}"'
        elif 'function expand' in text:
            grant = f'GRANT EXECUTE ON FUNCTION crm_realtime.expand(text, jsonb) TO "{role}"'
        else:
            grant = (f'GRANT SELECT ON crm_realtime.journal, crm_realtime.journal_state, '
                     f'crm_realtime.watched_table, crm_realtime.mapping_status TO "{role}"')
        first = text.splitlines()[0] if text else 'permission denied'
        return (f'database role "{role}" cannot read the journal ({first}): as the DBA, run '
                f'{grant} (sql/README.md, step 4)')
    return None

def _change_id(change: Change) -> int:
    return change.id


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
        self._chan: Optional[Channel] = None     # how every query on _conn runs (pgchannel.py)
        self._stopping = False
        self._wake = asyncio.Event()
        self.ready = False
        self.position: Optional[str] = None     # snapshot everything before which was dispatched
        self.reconnects = 0
        self.last_error: Optional[str] = None
        self.hint: Optional[str] = None           # the DBA step that fixes last_error, if known
        #: sentences from crm_realtime.mapping_status (None: not read yet / not readable)
        self.mapping_problems: Optional[List[str]] = None
        self.reads = 0
        self.following = False     # True while the lock is released (reading anyway)
        self._advanced = asyncio.Event()
        self._attempt = 0
        self._in_progress: Tuple[int, ...] = ()   # transactions running at the last read
        self._started_since = False                # of those, some began after the read before
        self._watch: frozenset = frozenset()       # of those, the ones that may not notify
        self._found = 0                            # rows the last read's range held
        self._carried = 0                          # of those, rows somebody needed
        #: the organizations (text ids) somebody needs; None: read every row, never doze
        self.interest: Optional[Callable[[], Collection[str]]] = None
        self.dormant = False       # True while nobody is interested (see the module doc)
        self._refresh = False      # fresh() asked for the position to be moved
        self.supplements = 0       # read_between reads (a join raced a read)
        self._mapping_at = 0.0
        self._mapping_unreadable = False
        self._mapping_gauge = None
        if metrics is not None:
            from prometheus_client import Gauge
            self._mapping_gauge = Gauge(
                'crm_realtime_mapping_problems',
                'Mapped columns of watched tables that are missing, renamed or stale '
                '(crm_realtime.mapping_status; -1: not readable)', registry=metrics.registry)

    # how the listener follows writers that skipped their NOTIFY (see the module doc)
    follow_min_seconds = 0.002
    # at most this much added to a delivery while following: with 5 ms the
    # commit-to-client p99 at 200 events/s stays under 10 ms (8 ms gave 13-14 ms)
    follow_max_seconds = 0.005
    follow_batch = 4
    follow_empty_reads = 3
    watch_max_seconds = 0.1
    mapping_check_seconds = 30.0

    async def wait_advanced(self, timeout: float) -> bool:
        """Wait until the next journal read completes; False on timeout."""
        event = self._advanced
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def wake(self) -> None:
        """Somebody became interested or nobody is any more: look again now, not at the timer."""
        if self._chan is not None:
            self._chan.wake()

    async def fresh(self, timeout: Optional[float] = None) -> None:
        """While dormant, move the position to the current snapshot (one small query) and
        return once it has moved (or after ``timeout``); otherwise return at once."""
        if not (self.dormant and self.ready):
            return
        event = self._advanced          # the next read to complete
        self._refresh = True
        self.wake()
        try:
            await asyncio.wait_for(event.wait(), timeout or self._timeout)
        except asyncio.TimeoutError:
            pass

    def _idle(self) -> bool:
        interest = self.interest
        return interest is not None and not interest()

    async def run(self, on_changes: OnChanges) -> None:
        """Read the journal until ``stop()``, handing every batch to ``on_changes``."""
        self._on_changes = on_changes
        delay = 0.0
        while not self._stopping:
            try:
                await self._connect()
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is handled the same way
                if self._stopping:
                    break
                self.ready = False
                self.following = False
                self.dormant = False
                self.reconnects += 1
                if self._metrics:
                    self._metrics.listener_reconnects.inc()
                # the backoff grows until a read succeeds (see _serve), not merely a connect
                delay = min(self._max_backoff, 0.25 * 2 ** self._attempt) * random.uniform(0.5, 1.0)
                self._attempt = min(self._attempt + 1, 16)
                self.hint = explain(exc, self._database(), self._role())
                if self.hint:
                    self.last_error = self.hint
                    log.error('listener: %s; retrying in %.1fs', self.hint, delay)
                else:
                    self.last_error = f'{exc.__class__.__name__}: {exc}'.strip()
                    log.warning('listener connection lost (%s); reconnecting in %.2fs',
                                self.last_error, delay)
            finally:
                await self._close()
            if not self._stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay if self._attempt else 0.0)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        self.ready = False

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.wake()
        await self._close()

    def explain(self, exc: BaseException) -> Optional[str]:
        """The DBA step that fixes ``exc`` for this sidecar's database and role, if it is one."""
        return explain(exc, self._database(), self._role())

    def _database(self) -> str:
        try:
            return psycopg.conninfo.conninfo_to_dict(self._url).get('dbname') or '?'
        except psycopg.Error:
            return '?'

    def _role(self) -> str:
        try:
            info = psycopg.conninfo.conninfo_to_dict(self._url)
        except psycopg.Error:
            return '?'
        return info.get('user') or '?'

    async def _connect(self) -> None:
        self._conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name='crm-realtime listener',
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            connect_timeout=max(2, int(self._timeout))), timeout=self._timeout + 2)
        # from here on every query runs through the channel, which reads the socket
        conn = self._chan = Channel(self._conn, self._timeout)
        await conn.simple(f'LISTEN "{CHANNEL}"')
        # waiting for wake-ups from here on (the catch-up read in _serve comes after)
        self.following = True
        await self._take(conn)
        if self.position is None:
            self.position = await journal.current_snapshot(conn)
        self.ready = True
        log.info('listening on channel %s', CHANNEL)

    async def _serve(self) -> None:
        conn = self._chan
        await self._read(catch_up=True)     # whatever committed while we were away
        # writers that probed before the lock was taken at connect did not notify
        self._watch = frozenset(self._in_progress)
        self._attempt = 0           # the journal is readable: a later failure starts the backoff anew
        if self.hint:
            log.info('listener: the journal is readable now')
        self.hint = None
        await self._check_mapping(conn)
        delay, empty = self.follow_min_seconds, 0
        while not self._stopping:
            now = time.monotonic()
            if self._idle():
                await self._doze(conn)
                if self._stopping:
                    return
                delay, empty = self.follow_max_seconds, 0
                continue
            if self.following:
                empty = 0 if self._found else empty + 1
                if empty >= self.follow_empty_reads:
                    if await self._take(conn):
                        # read once more; who was running may have skipped its NOTIFY
                        await self._read()
                        self._watch = frozenset(self._in_progress)
                        delay = self.follow_max_seconds
                        continue
                # aim at a few changes per read: fewer reads when changes are
                # sparse, never more than follow_max_seconds of added delay
                # (counting the rows somebody needs: rows of organizations
                # nobody listens to do not make reads more frequent)
                if self._carried >= self.follow_batch * 4:
                    delay = max(delay / 2, self.follow_min_seconds)
                elif self._carried < self.follow_batch:
                    delay = min(delay * 2, self.follow_max_seconds)
                # the lock is released: no writer notifies us, so no socket to
                # watch; a notification taken in by the next read is flagged
                await asyncio.sleep(delay)
            else:
                if self._watch:
                    timeout = min(delay, self._check)
                    delay = min(delay * 2, self.watch_max_seconds)
                else:
                    timeout = self._check
                woke = await self._notified(conn, timeout)
                if self._stopping:
                    return
                if not woke and not self._watch:
                    await conn.simple('SELECT 1')
            if self._stopping:
                return
            await self._read()
            if not self.following:
                self._watch = self._watch.intersection(self._in_progress)
                if self._found and self._started_since:
                    # busy: follow instead of being woken by every commit. Only
                    # transactions that began since the previous read count: one
                    # left open for minutes anywhere in the cluster (a report, an
                    # idle-in-transaction session) says nothing about the CRM's
                    # writes, and taking it for them added up to follow_max_seconds
                    # to every delivery for as long as it stayed open
                    await self._release(conn)
                    delay, empty = self.follow_min_seconds, 0
            if now - self._mapping_at >= self.mapping_check_seconds:
                await self._check_mapping(conn)

    async def _doze(self, conn) -> None:
        """Nobody is interested: no lock, no reads, until somebody is (see the module doc)."""
        self.dormant = True
        if not self.following:
            await self._release(conn)       # writers stop notifying
        self._watch = frozenset()
        log.debug('listener: nobody connected; dormant')
        try:
            while not self._stopping:
                if not self._idle():
                    # Somebody joined: take the lock, then read once more. A writer
                    # that skipped its NOTIFY meanwhile is in that read, or listed
                    # in progress by it and watched from there.
                    await self._take(conn)
                    self.dormant = False
                    await self._read()
                    self._watch = frozenset(self._in_progress)
                    return
                if self._refresh:
                    self._refresh = False
                    await self._read()     # nobody interested: a snapshot, no rows
                    continue
                woke = await self._notified(conn, self._check)
                if self._stopping:
                    return
                if woke:
                    self._refresh = True   # a recovery check here waits for the position to move
                else:
                    await conn.simple('SELECT 1')
                if time.monotonic() - self._mapping_at >= self.mapping_check_seconds:
                    await self._check_mapping(conn)
        finally:
            self.dormant = False

    async def _take(self, conn: Channel) -> bool:
        result = (await conn.simple('SELECT pg_catalog.pg_try_advisory_lock_shared(%d, %d)' % LOCK_KEY))[-1]
        self.following = result.get_value(0, 0) != b't'
        return not self.following

    async def _release(self, conn: Channel) -> None:
        await conn.simple('SELECT pg_catalog.pg_advisory_unlock_shared(%d, %d)' % LOCK_KEY)
        self.following = True

    async def _check_mapping(self, conn) -> None:
        """Read crm_realtime.mapping_status; a failure here never takes the listener down."""
        self._mapping_at = time.monotonic()
        try:
            result = (await conn.simple(MAPPING_SQL))[-1]
            problems = [conn.text(result.get_value(i, 0)) for i in range(result.ntuples)]
        except psycopg.errors.UndefinedTable:
            problems = None
            note = 'crm_realtime.mapping_status does not exist: run sql/install.sql again to get it'
        except psycopg.errors.InsufficientPrivilege:
            problems = None
            note = (f'cannot read crm_realtime.mapping_status: as the DBA, run '
                    f'GRANT SELECT ON crm_realtime.mapping_status TO "{self._role()}"')
        if problems is None:
            if not self._mapping_unreadable:       # say it once, not every check
                log.warning('listener: %s; mapping problems are not reported meanwhile', note)
            self._mapping_unreadable = True
            self.mapping_problems = None
            if self._mapping_gauge is not None:
                self._mapping_gauge.set(-1)
            return
        self._mapping_unreadable = False
        if problems != (self.mapping_problems or []):
            for line in problems:
                if line not in (self.mapping_problems or []):
                    log.warning('mapping: %s', line)
            if not problems and self.mapping_problems:
                log.info('mapping: every mapped column is in place again')
        self.mapping_problems = problems
        if self._mapping_gauge is not None:
            self._mapping_gauge.set(len(problems))


    async def _notified(self, conn: Channel, timeout: float) -> bool:
        """True when a notification (or anything else from the server) came within ``timeout``,
        or ``wake()`` was called.

        Not ``conn.notifies(timeout=...)``: while it waits, psycopg wakes every
        100 ms to poll its socket, ten times a second on an idle sidecar; and
        each call costs tens of µs of locking and generator set-up. The channel
        (pgchannel.py) keeps one reader on the socket: a notification taken in
        during a query is flagged and returns at once; otherwise the task sleeps
        until the socket is readable, ``stop()`` or ``wake()`` is called, or
        ``timeout`` passes. A closed or broken connection shows up as readable,
        and consuming the input raises here, which the run loop handles.
        """
        woke = await conn.wait(timeout)
        return woke and not self._stopping

    async def _read(self, catch_up: bool = False) -> None:
        before = self.position
        # A long catch-up may legitimately take longer than a probe; a live read
        # is bounded like a probe, so a backend that stops answering in the
        # middle of the follow-up reads is found as fast as an idle one.
        # (The channel bounds each query: past the bound it closes the connection.)
        conn = self._chan
        conn.timeout = self._timeout * (6 if catch_up else 1)
        try:
            interest = self.interest
            if interest is None:
                after, changes = await journal.read_since(conn, before)
                found = len(changes)
            else:
                orgs = frozenset(interest())
                if orgs:
                    after, found, changes = await journal.read_since_for(conn, before, orgs)
                else:
                    after = await journal.reader_snapshot(conn)
                    found, changes = 0, []
                # Somebody started listening to (or recovering in) an organization
                # this read left out: read the same range for it before dispatching,
                # so the batch holds every row anybody in a room now needs.
                missing = frozenset(interest()) - orgs
                while missing:
                    extra = await journal.read_between(conn, before, after, missing)
                    self.supplements += 1
                    if extra:
                        changes = sorted(changes + extra, key=_change_id)
                    orgs |= missing
                    missing = frozenset(interest()) - orgs
        finally:
            conn.timeout = self._timeout
        if changes:
            await self._on_changes(before, after, changes)
        self.position = after
        self.reads += 1
        self._found = found
        self._carried = len(changes)
        self._in_progress = _in_progress(after)
        # running now and not yet begun at the previous read's snapshot
        since_xmax = _xmax(before) if before else 0
        self._started_since = any(x >= since_xmax for x in self._in_progress)
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _close(self) -> None:
        chan, self._chan = self._chan, None
        if chan is not None:
            chan.close()     # the loop forgets the socket first; a query in flight raises
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await asyncio.wait_for(conn.close(), timeout=2)
            except Exception:  # noqa: BLE001 - a dead connection may fail to close politely
                pass

