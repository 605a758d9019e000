"""Accepting connections when the process is out of file descriptors.

tornado's accept handler (``netutil.add_accept_handler``) lets any ``accept()``
error other than "would block" and "aborted" escape into the event loop. Out of
descriptors (``EMFILE``, ``ENFILE``), the listening socket stays readable, so
the loop calls the handler again at once: one core spins and asyncio logs a
traceback per call (measured: 41,000 tracebacks and half a core in 6 s with the
soft limit at 80). Clients already connected keep working, which hides the
cause behind a log that fills the disk.

``add_guarded_sockets`` serves the sockets as ``HTTPServer.add_sockets`` does,
and on those errors stops accepting for ``PAUSE_SECONDS`` (nginx does the
same): waiting connections stay in the kernel's backlog and are accepted when
descriptors are free again, one WARNING names the limit and the fix at most
every ``WARN_EVERY_SECONDS``, and ``on_exhausted`` is called each time
(a metric).

Private name relied on (versions in the package docstring):
``TCPServer._handle_connection(connection, address)``, what tornado's own
accept callback calls: it wraps the socket in an ``IOStream`` (or an
``SSLIOStream``) and hands it to ``handle_stream``. Everything else is public:
``add_sockets`` (which also makes ``stop()`` close these sockets, through the
remover it stores, whichever handler is registered for the socket) and the
IOLoop's ``add_handler``/``remove_handler``.
"""
from __future__ import annotations

import errno
import logging
import resource
import socket
import time
from typing import Callable, Iterable, Optional

from tornado.ioloop import IOLoop

log = logging.getLogger('crm_realtime.wire')

#: how long accepting pauses when the process is out of descriptors
PAUSE_SECONDS = 0.5
WARN_EVERY_SECONDS = 10.0
#: accept() errors that mean "no descriptor for the new connection now"
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: connections accepted per wake-up, as tornado's own handler (its backlog default)
ACCEPTS_PER_CALL = 128


def _limit_text() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f'{soft}' if soft == hard else f'{soft} (hard limit {hard})'


class _GuardedAccept:
    def __init__(self, server, sock: socket.socket,
                 on_exhausted: Optional[Callable[[], None]]):
        self._server = server
        self._sock = sock
        self._on_exhausted = on_exhausted
        self._loop = IOLoop.current()
        self._paused = None      # the timer that resumes accepting
        self._warned = -WARN_EVERY_SECONDS
        self._refused = 0

    def __call__(self, fd, events) -> None:
        for _ in range(ACCEPTS_PER_CALL):
            if self._paused is not None:
                return
            try:
                connection, address = self._sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_DESCRIPTORS:
                    raise
                self._pause(exc)
                return
            self._server._handle_connection(connection, address)

    def _pause(self, exc: OSError) -> None:
        self._refused += 1
        self._loop.remove_handler(self._sock)
        self._paused = self._loop.call_later(PAUSE_SECONDS, self._resume)
        if self._on_exhausted is not None:
            self._on_exhausted()
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_SECONDS:
            self._warned = now
            log.warning('out of file descriptors (%s; the open-files limit is %s): new connections '
                        'wait in the listen queue, accepting again every %.1f s; raise the limit '
                        '(LimitNOFILE=, docker --ulimit nofile=, ulimit -n; see the README, '
                        '"File descriptors"); %d pauses so far',
                        exc.strerror or errno.errorcode.get(exc.errno, exc.errno), _limit_text(),
                        PAUSE_SECONDS, self._refused)

    def _resume(self) -> None:
        self._paused = None
        if self._sock.fileno() < 0:      # the server stopped meanwhile
            return
        self._loop.add_handler(self._sock, self, IOLoop.READ)
        self(self._sock.fileno(), IOLoop.READ)

    def cancel(self) -> None:
        if self._paused is not None:
            self._loop.remove_timeout(self._paused)
            self._paused = None


def add_guarded_sockets(server, sockets: Iterable[socket.socket],
                        on_exhausted: Optional[Callable[[], None]] = None) -> list:
    """``server.add_sockets(sockets)``, with accepting paused (not spinning) when out of descriptors.

    Returns the guards; ``cancel()`` each when the server stops (a pending resume
    would otherwise re-register a closed socket: it checks, but need not run).
    """
    sockets = list(sockets)
    server.add_sockets(sockets)
    loop = IOLoop.current()
    guards = []
    for sock in sockets:
        guard = _GuardedAccept(server, sock, on_exhausted)
        loop.remove_handler(sock)
        loop.add_handler(sock, guard, IOLoop.READ)
        guards.append(guard)
    return guards
