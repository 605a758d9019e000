"""Run one sidecar process: logging, the port check, the event loop, signals.

Shared by ``crm-realtime serve`` (``cli.py``) and ``crm-realtime demo``
(``demo/demo.py``), so that neither imports the other.

``check_port`` comes before any other work (the demo starts PostgreSQL and
loads its data only after it): a port already in use is one sentence naming
the host, the port and ``SIDECAR_PORT``, and exit status 2.
"""
from __future__ import annotations

import asyncio
import errno
import faulthandler
import gc
import logging
import resource
import signal

import tornado.netutil

from .settings import ConfigError

log = logging.getLogger('crm_realtime')


class PortInUse(ConfigError):
    """The configured host:port cannot be bound (message for the operator)."""


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    # APScheduler logs "Running job ..." and "executed successfully" at INFO on
    # every run; keep that at DEBUG. A failed or missed job is a WARNING or an
    # ERROR and still shows.
    if level != 'DEBUG':
        logging.getLogger('apscheduler').setLevel(logging.WARNING)


#: open files kept for the database pool, the listener, logs and the like
RESERVED_DESCRIPTORS = 64
#: below this soft limit the start-up log warns
LOW_OPEN_FILES = 4096
#: the soft limit is raised to the hard one, up to this (an unlimited hard limit)
OPEN_FILES_CAP = 1 << 20


def port_in_use_message(host: str, port: int) -> str:
    return (f'port {port} on {host} is already in use; stop what listens there or choose '
            f'another port with SIDECAR_PORT.')


def check_port(host: str, port: int) -> None:
    """Raise PortInUse when ``host:port`` cannot be bound now (port 0 always can)."""
    if port == 0:
        return
    try:
        # the same call the server makes, so the same addresses and options
        sockets = tornado.netutil.bind_sockets(port, host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port_in_use_message(host, port)) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PortInUse(f'SIDECAR_HOST={host!r} is not an address of this machine '
                            f'(cannot listen on port {port} there).') from None
        if exc.errno == errno.EACCES:
            raise PortInUse(f'port {port} on {host} needs privileges this process lacks; '
                            f'choose a port above 1023 with SIDECAR_PORT.') from None
        raise
    for s in sockets:
        s.close()


def database_error_text(exc: BaseException) -> str:
    """A psycopg error as one sentence without its final period: PostgreSQL's
    primary message, or libpq's text on one line (no SQL, no bound values)."""
    diag = getattr(exc, 'diag', None)
    primary = getattr(diag, 'message_primary', None) if diag is not None else None
    text = primary or ' '.join(str(exc).split()) or exc.__class__.__name__
    for prefix in ('FATAL: ', 'ERROR: '):
        text = text.replace(prefix, '')
    return text.rstrip('.')


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one, and say what it allows.

    Each client is a file descriptor; the usual soft default (1,024) stops a
    sidecar at about a thousand clients while the hard limit (what the service
    manager grants) is often far higher. Only the hard limit is the operator's
    decision (README, "File descriptors").
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_CAP if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_CAP)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:   # pragma: no cover - a platform refusing it
            log.info('open-files limit: %s (could not raise it: %s)', soft, exc)
    clients = max(0, soft - RESERVED_DESCRIPTORS)
    if soft < LOW_OPEN_FILES:
        log.warning('open-files limit is %s: room for about %d clients; raise it where the service '
                    'starts (LimitNOFILE=, docker --ulimit nofile=, ulimit -Hn; README, "File '
                    'descriptors")', soft, clients)
    else:
        log.info('open-files limit: %s (room for about %d clients)', soft, clients)


def tune_gc() -> None:
    """Move start-up objects out of the collector's way.

    A sidecar allocates many short-lived objects per event and keeps few; the
    default thresholds make gen-0 collections run constantly and gen-2 ones
    rescan every long-lived module object. Freezing what start-up built and
    raising the gen-0 threshold cuts that work without unbounded growth.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_sidecar(settings, *, on_ready=None, drain=True) -> None:
    """Start a sidecar, call ``on_ready(sidecar)``, serve until a signal, stop it.

    SIGTERM (a deploy, ``docker stop``): drain first (``Sidecar.drain``: /readyz
    503 for ``SIDECAR_DRAIN_SECONDS`` while clients are still served), then
    stop. SIGINT (Ctrl-C), or a second signal during the drain: stop at once.
    """
    from .app import Sidecar
    sidecar = Sidecar(settings)
    try:
        await sidecar.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:   # taken between check_port and now
            raise PortInUse(port_in_use_message(settings.host, settings.port)) from None
        raise
    stop = asyncio.Event()
    signals = []
    loop = asyncio.get_running_loop()

    def on_signal(sig):
        signals.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    if on_ready is not None:
        on_ready(sidecar)
    tune_gc()
    try:
        await stop.wait()
        if drain and signals[0] == signal.SIGTERM:
            stop.clear()
            draining = asyncio.ensure_future(sidecar.drain())
            again = asyncio.ensure_future(stop.wait())
            await asyncio.wait([draining, again], return_when=asyncio.FIRST_COMPLETED)
            again.cancel()
            if not draining.done():
                log.info('second signal: stopping now')
                draining.cancel()   # only its wait: stop() below does the closing
    finally:
        log.info('shutting down')
        await sidecar.stop()


def serve(settings, *, on_ready=None) -> int:
    """The whole life of a serving process; returns its exit status."""
    # a crash in native code (a C extension, the interpreter) prints every thread's
    # Python stack to stderr before the process dies: file, line, function, no values
    faulthandler.enable()
    check_port(settings.host, settings.port)
    configure_logging(settings.log_level)
    raise_open_files_limit()
    asyncio.run(run_sidecar(settings, on_ready=on_ready))
    return 0
