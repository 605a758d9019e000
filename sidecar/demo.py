"""``crm-realtime demo``: everything needed to watch live events, in one command.

Uses ``SIDECAR_DATABASE_URL`` when set (it must be a scratch database: the
reference CRM tables are created in it), otherwise starts an embedded
PostgreSQL (the ``pgserver`` package). Then loads the reference CRM schema and a
few rows, installs ``sql/install.sql``, serves, and prints tokens.

It also serves the demo page (``sidecar/demo_web.py``, ``/demo/?user=1|2|3``)
and gives organization 1 a Calendly connection with a generated signing key,
so the page can send signed bookings to the real webhook route. That
connection belongs to no Calendly account: unless SIDECAR_CALENDLY_API_URL is
set, polls go to a stand-in served by the demo itself (an account without events).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
import time

import jwt
import psycopg

from . import demo_calendly, demo_web
from .settings import load_settings
from .sqlfiles import sql_text

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
    import pgserver
    data_dir = data_dir or tempfile.mkdtemp(prefix='crm-realtime-demo-')
    server = pgserver.get_server(data_dir, cleanup_mode='stop')
    return server, server.get_uri()


def prepare_database(url: str) -> None:
    """Reference schema + seed rows + install.sql; safe to run again."""
    with psycopg.connect(url, autocommit=True) as conn:
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


def run_demo(args) -> int:
    from .cli import _configure_logging, run_sidecar

    env = dict(os.environ)
    server = None
    overrides = {}
    if not env.get('SIDECAR_DATABASE_URL') and not env.get('SIDECAR_DATABASE_URL_FILE'):
        print('No SIDECAR_DATABASE_URL: starting an embedded PostgreSQL (pgserver)...', flush=True)
        server, url = start_embedded(args.data_dir)
        overrides['database_url'] = url
    if not env.get('SIDECAR_JWT_SECRET') and not env.get('SIDECAR_JWT_SECRET_FILE'):
        # a throw-away secret: the demo mints its own tokens
        overrides['jwt_secret'] = secrets.token_urlsafe(48)
        overrides['jwt_algorithms'] = 'HS256'
    if not env.get('SIDECAR_CALENDLY_ENCRYPTION_KEY') and not env.get('SIDECAR_CALENDLY_ENCRYPTION_KEY_FILE'):
        overrides['calendly_encryption_key'] = secrets.token_urlsafe(32)
    settings = load_settings(env, **overrides)
    if not env.get('SIDECAR_CALENDLY_API_URL'):
        settings = demo_calendly.with_calendly_stand_in(settings)
    _configure_logging(settings.log_level)
    prepare_database(settings.database_url)
    tokens = demo_tokens(settings.jwt_secret)

    def announce(port, page=False):
        base = f'http://{settings.host}:{port}'
        print(f'\ncrm-realtime demo is serving Socket.IO on {base}/socket.io/', flush=True)
        for t in tokens:
            print(f"  user {t['user_id']} ({t['email']}, organization {t['organization_id']}):\n"
                  f"    {t['token']}", flush=True)
        if page:
            print('Demo page, one tab per user:', flush=True)
            for uid, org, email in USERS:
                print(f'  {base}/demo/?user={uid}   ({email}, organization {org})', flush=True)
        print('Ctrl-C stops it.', flush=True)

    try:
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

        # one process and no load balancer: nothing to drain from
        asyncio.run(run_sidecar(settings, on_ready=on_ready, drain=False))
    finally:
        if server is not None:
            server.cleanup()
    return 0
