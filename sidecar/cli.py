"""The crm-realtime console command (see ``crm-realtime --help``)."""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .settings import ConfigError, load_settings

DESCRIPTION = """\
Realtime Socket.IO sidecar for a CRM's PostgreSQL tables.

  crm-realtime serve                    run the sidecar (settings from SIDECAR_* variables)
  crm-realtime demo                     embedded PostgreSQL + reference CRM + sidecar + demo page
  crm-realtime install-sql              apply sql/install.sql to SIDECAR_DATABASE_URL
  crm-realtime uninstall-sql            apply sql/uninstall.sql to SIDECAR_DATABASE_URL
  crm-realtime client-bundle install    fetch the official socket.io-client the sidecar serves
  crm-realtime calendly ...             manage Calendly connections (see the README)

Exit status: 0 done, 1 the database (or npm, or Calendly) refused, 2 configuration error.
"""


def cmd_serve(args) -> int:
    from .runner import serve
    return serve(load_settings())


def cmd_demo(args) -> int:
    from .demo.demo import run_demo
    return run_demo(args)


def _apply(name: str) -> int:
    import psycopg

    from .runner import database_error_text
    from .sqlfiles import apply
    settings = load_settings(require_auth=False)
    try:
        apply(settings.database_url, name)
    except psycopg.Error as exc:
        print(f'crm-realtime: {name} was not applied: {database_error_text(exc)}.', file=sys.stderr)
        return 1
    print(f'applied {name}')
    return 0


def cmd_client_bundle(args) -> int:
    from . import client_bundle
    if args.bundle_command == 'install':
        return client_bundle.install(version=args.range)
    return client_bundle.status()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='crm-realtime', description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'crm-realtime {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('serve', help='run the sidecar').set_defaults(func=cmd_serve)
    demo = sub.add_parser('demo', help='run a self-contained demo')
    demo.add_argument('--data-dir', default=None,
                      help='where the embedded PostgreSQL keeps its files, kept between runs '
                           '(default: a temporary directory, removed when the demo stops)')
    demo.add_argument('--no-serve', action='store_true',
                      help='prepare the database and print tokens, then exit')
    demo.set_defaults(func=cmd_demo)
    sub.add_parser('install-sql', help='apply sql/install.sql (needs only SIDECAR_DATABASE_URL)').set_defaults(
        func=lambda a: _apply('install.sql'))
    sub.add_parser('uninstall-sql', help='apply sql/uninstall.sql (needs only SIDECAR_DATABASE_URL)').set_defaults(
        func=lambda a: _apply('uninstall.sql'))
    bundle = sub.add_parser('client-bundle', help='the socket.io-client browser build served at /client/',
                            description='The official socket.io-client browser build that the sidecar '
                                        'serves at /client/socket.io.min.js (the Odoo addon and the demo '
                                        'page load it from there).')
    bsub = bundle.add_subparsers(dest='bundle_command', required=True)
    binst = bsub.add_parser('install', help='install it with npm into this installation\'s data directory')
    from .client_bundle import CLIENT_VERSION
    binst.add_argument('--range', default=CLIENT_VERSION, metavar='NPM_RANGE',
                       help=f'npm version range of socket.io-client (default {CLIENT_VERSION})')
    bsub.add_parser('status', help='say where it is served from, or that it is missing')
    bundle.set_defaults(func=cmd_client_bundle)
    from .calendly.cli import add_parser as add_calendly
    add_calendly(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        from .runner import PortInUse
        prefix = '' if isinstance(exc, PortInUse) else 'configuration error: '
        print(f'crm-realtime: {prefix}{exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
