"""``crm-realtime calendly connect | list | disconnect | poll``.

Settings come from the same SIDECAR_* variables as ``serve``. A token is given
with ``--token TOKEN`` or ``--token -`` (read from standard input, which keeps
it out of the shell history and the process list); it is printed nowhere.
Exit status: 0 done, 1 Calendly or the database refused, 2 configuration error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import uuid

import psycopg

from ..settings import ConfigError, load_settings
from ..runner import database_error_text
from .client import CalendlyError, Forbidden, RetryPolicy, Unauthorized
from .component import Calendly, webhook_path
from .store import ACTIVE, NEEDS_REAUTH

#: the CLI waits for a human: a shorter patience than the poller's
CLI_POLICY = RetryPolicy(attempts=3, max_rate_wait=60)


def _connection_id(text: str) -> str:
    """argparse type: a connection id is a UUID; anything else is refused before the database."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a connection id (a UUID; see `crm-realtime calendly list`)') from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser('calendly', help='manage Calendly connections',
                              description='Link Calendly accounts to CRM organizations.')
    sub = p.add_subparsers(dest='calendly_command', required=True)

    c = sub.add_parser('connect', help='link a Calendly account to a CRM organization (or re-authorise it)')
    c.add_argument('--organization', required=True, help='CRM organization id the bookings belong to')
    c.add_argument('--token', required=True,
                   help='Calendly personal access token (or OAuth access token); "-" reads it from stdin')
    c.add_argument('--scope', choices=('organization', 'user'), default='organization',
                   help='poll and subscribe to the whole Calendly organization (needs an admin or owner '
                        'token; default) or only the token owner\'s events')
    c.add_argument('--webhook', action='store_true',
                   help='create the webhook subscription, with a signing key generated here '
                        '(needs SIDECAR_PUBLIC_URL)')
    c.add_argument('--signing-key', default=None,
                   help='signing key of a subscription created elsewhere; "-" reads it from stdin')
    c.set_defaults(func=_run(_connect))

    ls = sub.add_parser('list', help='show connections (never their secrets)')
    ls.add_argument('--json', action='store_true', help='one JSON object per line')
    ls.set_defaults(func=_run(_list))

    d = sub.add_parser('disconnect', help='delete a connection and its webhook subscription')
    d.add_argument('connection', type=_connection_id, help='connection id (see `calendly list`)')
    d.add_argument('--keep-webhook', action='store_true', help='leave the subscription in Calendly')
    d.set_defaults(func=_run(_disconnect))

    pl = sub.add_parser('poll', help='poll now (one connection, or every active one)')
    pl.add_argument('connection', nargs='?', type=_connection_id,
                    help='connection id; default: all active connections')
    pl.set_defaults(func=_run(_poll))


def _run(coro_fn):
    def run(args) -> int:
        settings = load_settings()
        return asyncio.run(_with_calendly(settings, coro_fn, args))
    return run


async def _with_calendly(settings, coro_fn, args) -> int:
    calendly = Calendly(settings, retry_policy=CLI_POLICY)
    try:
        await calendly.open()
        return await coro_fn(calendly, args)
    except CalendlyError as exc:
        _err(f'Calendly refused: {exc}')
        return 1
    except psycopg.Error as exc:
        _err(f'the database refused: {database_error_text(exc)}.')
        return 1
    finally:
        await calendly.close()


def _err(text: str) -> None:
    print(f'crm-realtime calendly: {text}', file=sys.stderr)


def _secret(value: str, what: str) -> str:
    if value == '-':
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise ConfigError(f'the {what} is empty.')
    return value


async def _connect(calendly: Calendly, args) -> int:
    settings = calendly.settings
    calendly.store.cipher      # fails now, naming the variable, when the key is missing
    if args.webhook and not settings.public_url:
        raise ConfigError('SIDECAR_PUBLIC_URL is not set (expected the sidecar\'s public base URL, '
                          'e.g. https://rt.example.com; --webhook builds the webhook URL from it).')
    if args.webhook and args.signing_key:
        raise ConfigError('--webhook generates the signing key; do not pass --signing-key with it.')
    token = _secret(args.token, 'token')
    signing_key = _secret(args.signing_key, 'signing key') if args.signing_key else None
    client = calendly.client(token)
    try:
        me = await client.me()
    except Unauthorized as exc:
        _err(f'Calendly refused the token ({exc}); nothing was stored.')
        return 1
    user, organization = me['uri'], me['current_organization']
    subject = organization if args.scope == 'organization' else user
    try:
        # one cheap listing proves the token may read what the poller will read
        async for _ in client.scheduled_events(count=1, **{args.scope: subject}):
            break
    except Forbidden as exc:
        _err(f'this token may not list the {args.scope}\'s events ({exc}); use an admin\'s token '
             'or --scope user. Nothing was stored.')
        return 1

    connection = await calendly.store.save(
        organization_id=args.organization, scope=args.scope, subject=subject,
        calendly_organization=organization, calendly_user=user, token=token)
    if args.webhook:
        if connection.webhook_subscription:
            try:
                await client.delete_webhook_subscription(connection.webhook_subscription)
            except CalendlyError as exc:
                print(f'note: the previous webhook subscription could not be deleted ({exc})')
        key = secrets.token_urlsafe(32)
        subscription = await client.create_webhook_subscription(
            url=calendly.webhook_url(connection.id), organization=organization, scope=args.scope,
            user=user, signing_key=key)
        await calendly.store.set_webhook(connection.id, subscription['uri'], key)
    elif signing_key:
        await calendly.store.set_webhook(connection.id, connection.webhook_subscription, signing_key)

    print(f'connected {connection.id}: CRM organization {connection.organization_id} <- '
          f'Calendly {args.scope} {subject}')
    print(f'webhook URL: {calendly.webhook_url(connection.id) or webhook_path(connection.id)}'
          + (' (subscription created)' if args.webhook else ''))
    return 0


async def _list(calendly: Calendly, args) -> int:
    connections = await calendly.store.list()
    if args.json:
        for c in connections:
            print(json.dumps({
                'id': c.id, 'organization_id': c.organization_id, 'scope': c.scope, 'subject': c.subject,
                'status': c.status, 'webhook_subscription': c.webhook_subscription,
                'signing_key': c.has_signing_key, 'watermark': c.watermark.isoformat(),
                'last_poll_at': c.last_poll_at and c.last_poll_at.isoformat(),
                'last_error': c.last_error}))
        return 0
    if not connections:
        print('no Calendly connection')
    for c in connections:
        webhook = 'subscribed' if c.webhook_subscription else 'signing key only' if c.has_signing_key \
            else 'none (poll only)'
        status = c.status if c.status == ACTIVE else \
            f'{c.status.upper()} - run `crm-realtime calendly connect` with a new token'
        print(f'{c.id}  organization {c.organization_id}  {c.scope} {c.subject}\n'
              f'    status: {status}\n'
              f'    webhook: {webhook}\n'
              f'    last poll: {c.last_poll_at.isoformat() if c.last_poll_at else "never"}, '
              f'watermark {c.watermark.isoformat()}'
              + (f'\n    last error: {c.last_error}' if c.last_error else ''))
    return 0


async def _disconnect(calendly: Calendly, args) -> int:
    connection = await calendly.store.get(args.connection)
    if connection is None:
        _err(f'no connection {args.connection}.')
        return 1
    if connection.webhook_subscription and not args.keep_webhook:
        try:
            client = calendly.client(calendly.store.token(connection))
            await client.delete_webhook_subscription(connection.webhook_subscription)
        except (CalendlyError, ConfigError) as exc:
            print(f'note: the webhook subscription could not be deleted ({exc}); '
                  'it disables itself once deliveries keep failing')
    await calendly.store.delete(connection.id)
    print(f'disconnected {connection.id}')
    return 0


async def _poll(calendly: Calendly, args) -> int:
    """Poll now; exit 1 when a connection failed or cannot be polled until re-authorised.

    A connection the running sidecar has just marked ``needs_reauth`` is not
    polled, but it is reported the same way, whichever process saw the 401.
    """
    if args.connection:
        results = [await calendly.poller.poll_connection(args.connection)]
    else:
        results = await calendly.poller.poll_all()
    failed = 0
    for r in results:
        state = 'skipped: another process is polling it' if r.locked_out else \
            f'error: {r.error}' if r.error else 'ok'
        failed += bool(r.error)
        if r.error or r.locked_out or r.polled:
            print(f'{r.connection_id}: {r.events} events, {r.events_fetched} fetched, '
                  f'{r.applied} bookings applied; {state}')
    if args.connection and not results[0].polled and not results[0].locked_out \
            and await calendly.store.get(args.connection) is None:
        print(f'{args.connection}: no such connection (see `crm-realtime calendly list`)')
        return 1
    reported = {r.connection_id for r in results if r.error}
    for c in await calendly.store.list(status=NEEDS_REAUTH):
        if c.id in reported or (args.connection and c.id != args.connection):
            continue
        failed += 1
        print(f'{c.id}: not polled; needs re-authorisation'
              + (f' (last error: {c.last_error})' if c.last_error else ''))
    return 1 if failed else 0

