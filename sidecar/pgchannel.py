"""The listener's PostgreSQL connection, driven through libpq's asynchronous API.

psycopg's ``AsyncConnection.execute`` costs about 230 µs of client CPU per
query, most of it in its waiting machinery: an ``add_reader``/``remove_reader``
pair per wait, a generator chain, an ``asyncio.Lock``, a cursor, the
prepared-statement bookkeeping and a loader per value. The listener makes one
small query per change it is woken for, so that fixed cost, not the fan-out,
was most of its CPU per event. ``Channel`` runs those queries with psycopg's
public low-level API instead (``psycopg.pq``: ``send_query_prepared``,
``consume_input``, ``is_busy``, ``get_result``, ``notifies``) and asyncio's
public ``add_reader``/``call_later``:

* one reader is registered on the connection's socket for the channel's whole
  life. What it reads is handed to the query in flight (resolved once libpq
  says ``not is_busy()``), or, between queries, wakes the task waiting for a
  notification (``wait``). Notifications read during a query are flagged
  (``notified``), so a wake-up is never lost: the NOTIFY is only a wake-up,
  its payload is not needed. That includes one libpq parses while the
  results are collected (sent just after the query's end and read with it):
  it is taken from libpq after every query and before every wait;
* statements are prepared once per connection under names of our own
  (``crm_rt_*``; psycopg's are ``_pg3_*``), with ``$n`` parameters sent and
  results received as text: the caller decodes the few columns it reads with
  ``int``/``float``/``bytes.decode`` (``journal.py``);
* every query is bounded by a timer (``call_later``), not a task and
  ``asyncio.wait`` per query. Past it, or on any connection error, the reader
  is removed and the connection closed under the query, which raises (a
  ``TimeoutError`` or psycopg's ``OperationalError``): the listener handles it
  like any failure (``/readyz`` 503, reconnect with backoff). Cancelling a
  query sends nothing: the connection is left to be closed.
* an error result raises the psycopg exception class of its SQLSTATE
  (``psycopg.errors.lookup``) with the server's primary message, as
  ``conn.execute`` would, so ``listener.explain`` still names the DBA step.

The ``psycopg.AsyncConnection`` is kept for connecting and closing; once a
channel is attached nothing else may run queries on it (its waits would take
the socket's reader away). ``detach`` before closing it.
"""
from __future__ import annotations

import asyncio
from typing import Dict, List, Optional, Sequence

import psycopg
from psycopg import pq

_FATAL = pq.ExecStatus.FATAL_ERROR
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.EMPTY_QUERY)
_BAD = pq.ConnStatus.BAD
_SQLSTATE = pq.DiagnosticField.SQLSTATE
_PRIMARY = pq.DiagnosticField.MESSAGE_PRIMARY


def _resolve(future: asyncio.Future, value=True) -> None:
    if not future.done():
        future.set_result(value)


class Channel:
    """One connection's queries and wake-ups, through libpq (see the module doc)."""

    def __init__(self, conn: psycopg.AsyncConnection, timeout: float):
        self.conn = conn
        self.pgconn = conn.pgconn
        self.encoding = conn.info.encoding
        #: seconds a query may take before the connection is dropped (callers may change it)
        self.timeout = timeout
        #: a notification came in (during a query, or while nobody waited)
        self.notified = False
        self.error: Optional[BaseException] = None
        self._loop = asyncio.get_running_loop()
        self._fd = self.pgconn.socket
        self._waiter: Optional[asyncio.Future] = None   # the query in flight, until not busy
        self._idle: Optional[asyncio.Future] = None     # wait(): anything from the server
        self._prepared: Dict[str, bytes] = {}
        self._attached = True
        self._loop.add_reader(self._fd, self._on_readable)

    # ------------------------------------------------------------------ socket

    def _on_readable(self) -> None:
        pgconn = self.pgconn
        try:
            pgconn.consume_input()
        except Exception as exc:  # noqa: BLE001 - a broken connection, whatever libpq says
            self._fail(exc)
            return
        while pgconn.notifies() is not None:
            self.notified = True
        waiter = self._waiter
        if waiter is not None:
            if not pgconn.is_busy():
                _resolve(waiter)
        elif self._idle is not None:
            _resolve(self._idle)

    def _fail(self, exc: BaseException) -> None:
        """The connection is unusable: stop watching it, close it, fail whoever waits."""
        if self.error is None:
            self.error = exc
        self.detach()
        self.pgconn.finish()          # frees the socket at once; no round trip
        for fut in (self._waiter, self._idle):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def detach(self) -> None:
        """Stop watching the socket (before the connection is closed or used by psycopg)."""
        if self._attached:
            self._attached = False
            try:
                self._loop.remove_reader(self._fd)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Close the connection under whatever runs (no round trip); waiters raise."""
        self._fail(psycopg.OperationalError('the connection was closed'))

    def wake(self) -> None:
        """End a ``wait`` now (it returns True)."""
        if self._idle is not None:
            _resolve(self._idle)

    # ------------------------------------------------------------------ waiting

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if not self._attached:
            raise psycopg.OperationalError('the connection is closed')

    async def wait(self, timeout: float) -> bool:
        """Sleep until the server sends something (a notification), ``wake()``, or
        ``timeout``: False after the timeout, True otherwise. A notification taken in
        earlier (``notified``) returns True at once, and is cleared."""
        self._check()
        while self.pgconn.notifies() is not None:     # parsed, not yet taken (see _results)
            self.notified = True
        if self.notified:
            self.notified = False
            return True
        idle = self._idle = self._loop.create_future()
        timer = self._loop.call_later(timeout, _resolve, idle, False)
        try:
            woke = await idle
        finally:
            timer.cancel()
            self._idle = None
        self.notified = False
        return woke

    def _expire(self, timeout: float) -> None:
        if self._waiter is not None:
            self._fail(TimeoutError(f'PostgreSQL did not answer within {timeout:g}s'))

    async def _results(self, timeout: float) -> List[pq.PGresult]:
        """Flush what was sent, then collect its results (all of them, up to libpq's None)."""
        pgconn = self.pgconn
        loop = self._loop
        timer = loop.call_later(timeout, self._expire, timeout)
        results = []
        try:
            while pgconn.flush():           # rare: the query did not fit the socket buffer
                waiter = self._waiter = loop.create_future()
                loop.add_writer(self._fd, _resolve, waiter)
                try:
                    await waiter
                finally:
                    self._waiter = None
                    if self._attached:
                        loop.remove_writer(self._fd)
            while True:
                while pgconn.is_busy():
                    waiter = self._waiter = loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._waiter = None
                result = pgconn.get_result()
                if result is None:
                    break
                results.append(result)
            # What followed the query's end in the same read (a NOTIFY sent just after
            # its ReadyForQuery) was parsed by is_busy/get_result, not by the reader's
            # notifies(): take it now, or the wake-up waits in libpq for the idle timer
            while pgconn.notifies() is not None:
                self.notified = True
        except asyncio.CancelledError:
            # abandoned with its results unread: the connection cannot run another query
            self._fail(psycopg.OperationalError('a query was abandoned'))
            raise
        except Exception as exc:    # the connection broke (or timed out): it is unusable
            self._fail(exc)
            # an error result before the connection broke says more than the break
            for result in results:
                if result.status == _FATAL:
                    raise self._error(result) from None
            raise
        finally:
            timer.cancel()
        for result in results:
            if result.status not in _OK:
                exc = self._error(result)
                if pgconn.status == _BAD:      # libpq dropped the connection (and its socket)
                    self._fail(exc)
                raise exc
        return results

    def _error(self, result: pq.PGresult) -> psycopg.Error:
        sqlstate = result.error_field(_SQLSTATE)
        message = result.error_field(_PRIMARY) or result.error_message
        text = message.decode(self.encoding, 'replace') if message else 'unknown error'
        try:
            cls = psycopg.errors.lookup(sqlstate.decode()) if sqlstate else psycopg.DatabaseError
        except KeyError:
            cls = psycopg.DatabaseError
        return cls(text)

    # ------------------------------------------------------------------ queries

    def _send(self, send, *args) -> None:
        self._check()
        try:
            send(*args)
        except Exception as exc:  # noqa: BLE001 - libpq could not send: the connection is gone
            self._fail(exc)
            raise

    async def simple(self, sql: str, timeout: Optional[float] = None) -> List[pq.PGresult]:
        """Run ``sql`` (no parameters, possibly several statements) with the simple protocol."""
        self._send(self.pgconn.send_query, sql.encode(self.encoding))
        return await self._results(timeout or self.timeout)

    async def prepared(self, name: str, sql: str, params: Sequence[Optional[bytes]],
                       timeout: Optional[float] = None) -> pq.PGresult:
        """Run the statement ``sql`` (``$n`` parameters, text) prepared once per connection
        as ``name``; returns its result, rows as text."""
        timeout = timeout or self.timeout
        key = self._prepared.get(name)
        if key is None:
            key = b'crm_rt_' + name.encode()
            self._send(self.pgconn.send_prepare, key, sql.encode(self.encoding))
            await self._results(timeout)
            self._prepared[name] = key
        self._send(self.pgconn.send_query_prepared, key, params)
        return (await self._results(timeout))[-1]

    def text(self, value: Optional[bytes]) -> Optional[str]:
        return None if value is None else value.decode(self.encoding)
