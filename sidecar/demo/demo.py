"""``crm-realtime demo``: everything needed to watch live events, in one command.

Uses ``SIDECAR_DATABASE_URL`` when set (it must be an empty scratch database or one the demo made, see ``prepare_database``: the
reference CRM tables are created in it), otherwise starts an embedded
PostgreSQL (the ``pgserver`` package). Then loads the reference CRM schema and a
few rows, installs ``sql/install.sql``, serves, and prints tokens.

It also serves the demo page (``sidecar/demo/demo_web.py``, ``/demo/?user=1|2|3``)
and gives organization 1 a Calendly connection with a generated signing key,
so the page can send signed bookings to the real webhook route. That
connection belongs to no Calendly account: unless SIDECAR_CALENDLY_API_URL is
set, polls go to a stand-in served by the demo itself (an account without events).

The embedded PostgreSQL lives in a temporary directory removed when the demo
stops, unless ``--data-dir`` names one to keep (and reuse on the next run).
Settings come from ``settings.py`` like ``serve``'s; the demo only fills in
the secrets a newcomer has not set (a throw-away JWT secret and Calendly key).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import shutil
import sys
import tempfile
import time
import warnings

import jwt
import psycopg

from ..runner import check_port, configure_logging, run_sidecar
from ..settings import SETTINGS, ConfigError, load_settings
from ..sqlfiles import sql_text
from . import demo_calendly, demo_web

log = logging.getLogger('crm_realtime.demo')

ORGANIZATIONS = [(1, 'Atelier Lumière'), (2, 'Maison Azur')]
USERS = [(1, 1, 'alice@lumiere.example'), (2, 1, 'bruno@lumiere.example'),
         (3, 2, 'chloe@azur.example')]
PROSPECTS = [
    (1, 'Camille', 'Martin', 'camille.martin@example.com', '+33 6 12 34 56 78', 'new', 'website'),
    (1, 'Léa', 'Bernard', 'lea.bernard@example.com', None, 'contacted', 'calendly'),
    (2, 'Hugo', 'Petit', 'hugo.petit@example.com', '+33 7 98 76 54 32', 'new', 'referral'),
]


def start_embedded(data_dir=None):
    """An embedded PostgreSQL: in ``data_dir`` (kept), else in a temporary directory (removed at stop)."""
    logging.getLogger('pgserver').setLevel(logging.WARNING)   # its INFO lines echo every pg_ctl run
    scratch = None
    if data_dir is None:
        scratch = data_dir = tempfile.mkdtemp(prefix='crm-realtime-demo-')
    try:
        with warnings.catch_warnings():
            # platformdirs' note about a runtime directory pgserver does not use
            warnings.filterwarnings('ignore', message='XDG_RUNTIME_DIR is not set')
            import pgserver
            server = pgserver.get_server(data_dir, cleanup_mode='delete' if scratch else 'stop')
    except BaseException:      # Ctrl-C during start-up too: leave nothing behind
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return server, server.get_uri()


#: a table the demo creates in its database, so that a later run knows the database is its own
DEMO_MARK = 'crm_realtime_demo_database'


class NotADemoDatabase(Exception):
    pass


def prepare_database(url: str) -> None:
    """Reference schema + seed rows + install.sql; safe to run again.

    Refuses a database that holds tables of its own and was not made by the
    demo: the demo writes demo users, prospects and a Calendly connection
    into it (a SIDECAR_DATABASE_URL left exported from a real set-up would
    otherwise get them).
    """
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE c.relname = %s) FROM pg_catalog.pg_class AS c "
            "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            [DEMO_MARK]).fetchone()
        if tables[0] and not tables[1]:
            raise NotADemoDatabase(
                f'database "{conn.info.dbname}" (SIDECAR_DATABASE_URL) already holds {tables[0]} '
                'table(s) and was not made by the demo, which writes demo rows and a Calendly '
                'connection into its database: give it an empty scratch database, or unset '
                'SIDECAR_DATABASE_URL for an embedded one.')
        conn.execute(f'CREATE TABLE IF NOT EXISTS public."{DEMO_MARK}" ()')
        conn.execute(f'COMMENT ON TABLE public."{DEMO_MARK}" IS '
                     "'made by crm-realtime demo: this database holds demo data only'")
        conn.execute(sql_text('examples/reference_crm.sql'))
        conn.execute(sql_text('install.sql'))
        with conn.transaction():
            for org in ORGANIZATIONS:
                conn.execute('INSERT INTO organizations (id, name) VALUES (%s, %s) '
                             'ON CONFLICT (id) DO NOTHING', org)
            for user in USERS:
                conn.execute('INSERT INTO users (id, organization_id, email) VALUES (%s, %s, %s) '
                             'ON CONFLICT (id) DO NOTHING', user)
            if conn.execute('SELECT count(*) FROM prospects').fetchone()[0] == 0:
                for p in PROSPECTS:
                    conn.execute('INSERT INTO prospects (organization_id, firstname, lastname, email, '
                                 'phone, status, source) VALUES (%s, %s, %s, %s, %s, %s, %s)', p)


def demo_token(secret: str, user_id: int, organization_id: int, email: str,
               lifetime: int = 12 * 3600) -> str:
    now = int(time.time())
    return jwt.encode({'sub': str(user_id), 'organization_id': organization_id, 'email': email,
                       'iat': now, 'exp': now + lifetime}, secret, algorithm='HS256')


def demo_tokens(secret: str, lifetime: int = 12 * 3600):
    return [{'user_id': uid, 'organization_id': org, 'email': email,
             'token': demo_token(secret, uid, org, email, lifetime)}
            for uid, org, email in USERS]


def demo_settings(environ=None):
    """The demo's settings: the environment's, with throw-away secrets where none is set."""
    settings = load_settings(environ, require_database=False, fill={
        # the demo mints its own tokens, and its Calendly connection is its own
        'jwt_secret': secrets.token_urlsafe(48),
        'calendly_encryption_key': secrets.token_urlsafe(32)})
    if not all(a.startswith('HS') for a in settings.jwt_algorithms):
        raise ConfigError(f'SIDECAR_JWT_ALGORITHMS={",".join(settings.jwt_algorithms)} cannot be used by the '
                          'demo, which signs its own HS256 tokens (unset it for the demo).')
    return settings


def run_demo(args) -> int:
    settings = demo_settings()
    # before PostgreSQL starts or any data is loaded (a port 0 is chosen here)
    check_port(settings.host, settings.port)
    if settings.calendly_api_url == next(s.default for s in SETTINGS if s.name == 'calendly_api_url'):
        settings = demo_calendly.with_calendly_stand_in(settings)
    server = None
    embedded = settings.database_url is None
    if embedded:
        print('No SIDECAR_DATABASE_URL: starting an embedded PostgreSQL (pgserver)...', flush=True)
        try:
            server, url = start_embedded(args.data_dir)
        except Exception as exc:  # noqa: BLE001 - pgserver reports its own failures as anything
            print(f'crm-realtime: the embedded PostgreSQL did not start ({exc.__class__.__name__}: '
                  f'{" ".join(str(exc).split())[:200]}); set SIDECAR_DATABASE_URL to use a server of your own.',
                  file=sys.stderr)
            return 1
        settings = dataclasses.replace(settings, database_url=url)
    try:
        return _run(args, settings, embedded, temporary=embedded and args.data_dir is None)
    finally:
        if server is not None:
            server.cleanup()


def _run(args, settings, embedded: bool, temporary: bool) -> int:
    configure_logging(settings.log_level)
    try:
        prepare_database(settings.database_url)
    except NotADemoDatabase as exc:
        print(f'crm-realtime demo: {exc}', file=sys.stderr)
        return 2
    tokens = demo_tokens(settings.jwt_secret)
    # the user's own URL may hold a password: name the variable instead
    psql = f"psql '{settings.database_url}'" if embedded else 'psql "$SIDECAR_DATABASE_URL"'

    def announce(port, page=False):
        base = f'http://{settings.host}:{port}'
        if page:
            print(f'\ncrm-realtime demo is serving Socket.IO on {base}/socket.io/', flush=True)
        else:
            print('\ncrm-realtime demo: the database is ready. Tokens:', flush=True)
        for t in tokens:
            print(f"  user {t['user_id']} ({t['email']}, organization {t['organization_id']}):\n"
                  f"    {t['token']}", flush=True)
        if page:
            print('Demo page, one tab per user:', flush=True)
            for uid, org, email in USERS:
                print(f'  {base}/demo/?user={uid}   ({email}, organization {org})', flush=True)
        if page or not temporary:
            print('The demo database (write to it and watch the events):', flush=True)
            print(f'  {psql}', flush=True)
            print("  e.g. INSERT INTO prospects (organization_id, firstname) VALUES (1, 'Zoé');", flush=True)
        if temporary:
            print('The embedded database is deleted when the demo stops (--data-dir DIR keeps it).',
                  flush=True)
        if page:
            print('Ctrl-C stops it.', flush=True)

    if args.no_serve:
        announce(settings.port)
        return 0
    links = asyncio.run(demo_calendly.create_calendly_links(settings, [1]))
    names = dict(ORGANIZATIONS)
    users = [demo_web.DemoUser(uid, org, names[org], email) for uid, org, email in USERS]

    def on_ready(sidecar):
        demo_web.mount(demo_web.Demo(
            sidecar, users, lambda u, ttl: demo_token(settings.jwt_secret, u.id, u.organization_id,
                                                      u.email, ttl), links))
        announce(sidecar.port, page=True)

    asyncio.run(run_sidecar(settings, on_ready=on_ready, drain=False))
    return 0
