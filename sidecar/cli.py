"""``crm-realtime`` console command.

    crm-realtime serve              run the sidecar (settings from SIDECAR_* variables)
    crm-realtime demo               embedded PostgreSQL + reference CRM + sidecar + demo tokens
    crm-realtime install-sql        apply sql/install.sql to SIDECAR_DATABASE_URL
    crm-realtime uninstall-sql      apply sql/uninstall.sql to SIDECAR_DATABASE_URL
    crm-realtime calendly ...       manage Calendly connections (see README)
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from .settings import ConfigError, load_settings

log = logging.getLogger('crm_realtime')


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')


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
    from .app import Sidecar
    sidecar = Sidecar(settings)
    await sidecar.start()
    # SIGTERM (a deploy, `docker stop`): drain first, see Sidecar.drain.
    # SIGINT (Ctrl-C), or a second signal during the drain: stop at once.
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
            drain = asyncio.ensure_future(sidecar.drain())
            again = asyncio.ensure_future(stop.wait())
            await asyncio.wait([drain, again], return_when=asyncio.FIRST_COMPLETED)
            again.cancel()
            if not drain.done():
                log.info('second signal: stopping now')
                drain.cancel()   # only its wait: stop() below does the closing
    finally:
        log.info('shutting down')
        await sidecar.stop()


def cmd_serve(args) -> int:
    settings = load_settings()
    _configure_logging(settings.log_level)
    asyncio.run(run_sidecar(settings))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


def _apply(name: str) -> int:
    from .sqlfiles import apply
    settings = load_settings()
    apply(settings.database_url, name)
    print(f'applied {name}')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='crm-realtime', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('serve', help='run the sidecar').set_defaults(func=cmd_serve)
    demo = sub.add_parser('demo', help='run a self-contained demo')
    demo.add_argument('--data-dir', default=None,
                      help='where the embedded PostgreSQL keeps its files (default: a temporary directory)')
    demo.add_argument('--no-serve', action='store_true',
                      help='prepare the database and print tokens, then exit')
    demo.set_defaults(func=cmd_demo)
    sub.add_parser('install-sql', help='apply sql/install.sql').set_defaults(
        func=lambda a: _apply('install.sql'))
    sub.add_parser('uninstall-sql', help='apply sql/uninstall.sql').set_defaults(
        func=lambda a: _apply('uninstall.sql'))
    from .calendly.cli import add_parser as add_calendly
    add_calendly(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f'crm-realtime: configuration error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
