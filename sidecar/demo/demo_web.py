"""Demo-only HTTP routes: the demo page, a tiny CRM API behind it, a Calendly simulator.

Mounted by ``crm-realtime demo`` (``sidecar/demo/demo.py``) and never by ``serve``:
the session endpoint hands a token to whoever asks, which only a demo may do.

* ``GET /demo/?user=1|2|3``: the page (``sidecar/demo/static/``). It behaves
  like the SPA of the frontend contract: its list changes only on Socket.IO
  events and on the refetch that follows every ``connect``, never from the
  answers of the API below.
* ``GET /demo/vendor/socket.io.min.js``: the official socket.io-client browser
  build, served from an npm-installed ``socket.io-client`` (see
  ``client_bundle.find_client_dist``); nothing third-party is committed. When none is
  installed the route answers 404 and the page says how to install it.
* ``GET /demo/api/session?user=N[&ttl=seconds]``: a fresh token for a demo user.
* ``GET|POST /demo/api/prospects``, ``PATCH|DELETE /demo/api/prospects/<id>``:
  the CRM's own backend in miniature, for the token's organization (verified by
  the same ``TokenVerifier`` as Socket.IO). Plain SQL on the reference CRM's
  ``prospects`` table; the capture triggers then emit the events.
* ``POST /demo/api/calendly/bookings``: builds (``demo_calendly.py``) an ``invitee.created`` webhook
  body shaped like Calendly's, signs it as Calendly does with the demo
  connection's signing key and POSTs it to this process's real webhook route,
  so the booking takes the real path (signature check, CRM writer, triggers).
* ``GET /demo/calendly-api/...``: what the poller sees of Calendly for the demo
  connections, which belong to no Calendly account: an account without
  events. Any other token gets 503, so a real connection that happens to live
  in the demo database is not polled against it (its watermark stays put).

Failure policy: the client gets ``{"error": <stable text>}`` with 400/401/404/
409/502; the log gets the detail. Tokens and signing keys are never logged.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import tornado.web
from tornado import httputil
from psycopg import sql
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..auth import AuthError, bearer_token
from ..calendly.signature import HEADER, sign
from ..client_bundle import ClientBuild, client_route, find_client_dist
from ..events import PROSPECT_FIELDS
from .demo_calendly import CALENDLY_STAND_IN, CalendlyLink, invitee_created, local_url

log = logging.getLogger('crm_realtime.demo_web')

STATIC_DIR = Path(__file__).resolve().parent / 'static'
#: written by the page's form; everything else of a prospect is the database's
EDITABLE = ('firstname', 'lastname', 'email', 'phone', 'status', 'source', 'notes')
MAX_TEXT = {'notes': 100_000}
MAX_FIELD = 500
TOKEN_TTL = (5, 12 * 3600)           # bounds of ?ttl=, seconds


@dataclasses.dataclass(frozen=True)
class DemoUser:
    id: int
    organization_id: int
    organization_name: str
    email: str


class Demo:
    """What the demo handlers share: the sidecar, the users, the token minter."""

    def __init__(self, sidecar, users: Iterable[DemoUser], mint: Callable[[DemoUser, int], str],
                 calendly: Iterable[CalendlyLink] = ()):
        self.sidecar = sidecar
        self.pool = sidecar.pool
        self.verifier = sidecar.realtime.verifier
        self.users = {u.id: u for u in users}
        self.mint = mint
        self.calendly = {c.organization_id: c for c in calendly}
        self.base_url = local_url(sidecar.settings.host, sidecar.port)
        self.http = AsyncHTTPClient(force_instance=True)

    def webhook_url(self, link: CalendlyLink) -> str:
        return f'{self.base_url}/webhooks/calendly/{link.connection_id}'

    def routes(self):
        ctx = {'demo': self}
        vendor = client_route('/demo/vendor/')
        if vendor[1] is not ClientBuild:
            log.warning('socket.io-client is not installed: the demo page cannot connect until '
                        '`crm-realtime client-bundle install` is run')
        return [
            (r'/', tornado.web.RedirectHandler, {'url': '/demo/', 'permanent': False}),
            (r'/demo', tornado.web.RedirectHandler, {'url': '/demo/', 'permanent': False}),
            (r'/demo/api/session', SessionHandler, ctx),
            (r'/demo/api/prospects', ProspectsHandler, ctx),
            (r'/demo/api/prospects/([0-9a-fA-F-]{36})', ProspectHandler, ctx),
            (r'/demo/api/calendly/bookings', CalendlyBookingHandler, ctx),
            (CALENDLY_STAND_IN + r'/(.*)', CalendlyStandInHandler, ctx),
            vendor,
            (r'/demo/(.*)', tornado.web.StaticFileHandler,
             {'path': str(STATIC_DIR), 'default_filename': 'index.html'}),
        ]


def mount(demo: Demo) -> None:
    """Add the demo routes to the running sidecar's application (before its own)."""
    demo.sidecar.app.add_handlers(r'.*', demo.routes())


class _Api(tornado.web.RequestHandler):
    def initialize(self, demo: Demo):
        self.demo = demo

    def set_default_headers(self):
        self.set_header('Cache-Control', 'no-store')

    def write_error(self, status_code, **kwargs):
        # an uncaught exception or send_error(): the reason it carries, else the status's phrase
        exc = kwargs.get('exc_info', (None, None, None))[1]
        reason = exc.reason if isinstance(exc, tornado.web.HTTPError) and exc.reason else None
        self.finish({'error': reason or httputil.responses.get(status_code, 'error')})

    def fail(self, status: int, text: str, detail: Optional[str] = None):
        """End the request with ``{"error": text}``; ``detail`` goes to the log only."""
        if detail:
            log.info('demo api %s %s: %d, %s', self.request.method, self.request.path, status, detail)
        self.set_status(status)
        self.finish({'error': text})
        raise tornado.web.Finish()

    def identity(self):
        try:
            return self.demo.verifier.verify(bearer_token(self.request.headers))
        except AuthError as exc:
            self.fail(401, 'invalid token', exc.detail)

    def json_body(self) -> Dict[str, Any]:
        try:
            body = json.loads(self.request.body or b'{}')
        except ValueError:
            self.fail(400, 'body is not JSON')
        if not isinstance(body, dict):
            self.fail(400, 'body is not a JSON object')
        return body

    def prospect_fields(self) -> Dict[str, Optional[str]]:
        """The editable fields present in the JSON body, checked (blank text -> null)."""
        body, fields = self.json_body(), {}
        for name in EDITABLE:
            if name not in body:
                continue
            value = body[name]
            if value is not None and not isinstance(value, str):
                self.fail(400, f'{name} must be a string or null')
            if isinstance(value, str):
                value = value if name == 'notes' else value.strip()
                if len(value) > MAX_TEXT.get(name, MAX_FIELD):
                    self.fail(400, f'{name} is too long')
                value = value or None
            fields[name] = value
        return fields


class SessionHandler(_Api):
    """A fresh token for one demo user (what the SPA's login would return)."""

    def get(self):
        try:
            user = self.demo.users[int(self.get_query_argument('user', '1'))]
        except (KeyError, ValueError):
            self.fail(404, f'no such demo user (choose one of {", ".join(map(str, self.demo.users))})')
        try:
            ttl = int(self.get_query_argument('ttl', str(TOKEN_TTL[1])))
        except ValueError:
            self.fail(400, 'ttl is not an integer')
        ttl = min(max(ttl, TOKEN_TTL[0]), TOKEN_TTL[1])
        self.write({'token': self.demo.mint(user, ttl), 'expires_in': ttl,
                    'user': {'id': str(user.id), 'email': user.email},
                    'organization': {'id': str(user.organization_id), 'name': user.organization_name},
                    'calendly': str(user.organization_id) in self.demo.calendly})


def _prospect(row) -> Dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(PROSPECT_FIELDS, row)}


_SELECT = sql.SQL('SELECT {} FROM prospects').format(sql.SQL(', ').join(
    sql.SQL('id::text') if f == 'id' else sql.Identifier(f) for f in PROSPECT_FIELDS))
_RETURNING = sql.SQL(' RETURNING id::text')


class ProspectsHandler(_Api):
    async def get(self):
        org = self.identity().organization_id
        async with self.demo.pool.connection() as conn:
            cur = await conn.execute(_SELECT + sql.SQL(
                ' WHERE organization_id::text = %s ORDER BY created_at DESC, id'), (org,))
            rows = await cur.fetchall()
        self.write({'prospects': [_prospect(r) for r in rows]})

    async def post(self):
        org = self.identity().organization_id
        fields = self.prospect_fields()
        if not (fields.get('firstname') or fields.get('lastname')):
            self.fail(400, 'a first name or a last name is required')
        fields.setdefault('status', 'new')
        names = ['organization_id', *fields]
        query = sql.SQL('INSERT INTO prospects ({}) VALUES ({})').format(
            sql.SQL(', ').join(map(sql.Identifier, names)), sql.SQL(', ').join(sql.Placeholder() * len(names)))
        async with self.demo.pool.connection() as conn:
            cur = await conn.execute(query + _RETURNING, (org, *fields.values()))
            (prospect_id,) = await cur.fetchone()
        self.set_status(201)
        self.write({'id': prospect_id})


class ProspectHandler(_Api):
    async def patch(self, prospect_id):
        org = self.identity().organization_id
        fields = self.prospect_fields()
        if not fields:
            self.fail(400, 'nothing to change')
        query = sql.SQL('UPDATE prospects SET {}, updated_at = now() '
                        'WHERE id = %s AND organization_id::text = %s').format(
            sql.SQL(', ').join(sql.SQL('{} = %s').format(sql.Identifier(k)) for k in fields))
        await self._one(query, (*fields.values(), prospect_id, org))

    async def delete(self, prospect_id):
        org = self.identity().organization_id
        await self._one(sql.SQL('DELETE FROM prospects WHERE id = %s AND organization_id::text = %s'),
                        (prospect_id, org))

    async def _one(self, query, params):
        async with self.demo.pool.connection() as conn:
            cur = await conn.execute(query + _RETURNING, params)
            if await cur.fetchone() is None:
                self.fail(404, 'no such prospect in your organization')
        self.write({'id': self.path_args[0]})


class CalendlyBookingHandler(_Api):
    """Plays Calendly: a signed ``invitee.created`` POSTed to the sidecar's own webhook."""

    async def post(self):
        org = self.identity().organization_id
        link = self.demo.calendly.get(org)
        if link is None:
            self.fail(409, f'organization {org} has no Calendly connection in this demo')
        body = self.json_body()
        email = body.get('email')
        if not isinstance(email, str) or '@' not in email:
            self.fail(400, 'an email address is required')
        first = body.get('first_name') if isinstance(body.get('first_name'), str) else ''
        last = body.get('last_name') if isinstance(body.get('last_name'), str) else ''
        phone = body.get('phone') if isinstance(body.get('phone'), str) else ''
        envelope = invitee_created(first_name=first.strip(), last_name=last.strip(),
                                   email=email.strip(), phone=phone.strip() or None)
        raw = json.dumps(envelope, ensure_ascii=False).encode('utf-8')
        # signed as Calendly signs: over the exact bytes sent, at the time of sending
        request = HTTPRequest(self.demo.webhook_url(link), method='POST', body=raw, request_timeout=15,
                              headers={'Content-Type': 'application/json',
                                       HEADER: sign(link.signing_key, int(time.time()), raw)})
        try:
            response = await self.demo.http.fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            self.fail(502, 'the webhook could not be reached', f'{exc.__class__.__name__}: {exc}')
        try:
            answer = json.loads(response.body or b'null')
        except ValueError:
            answer = None
        log.info('demo: simulated Calendly booking for organization %s -> webhook answered %s',
                 org, response.code)
        self.set_status(200 if response.code == 200 else 502)
        self.write({'webhook': {'status': response.code, 'body': answer}})


class CalendlyStandInHandler(_Api):
    """Calendly's API for the demo connections: an account without scheduled events."""

    def get(self, path):
        token = bearer_token(self.request.headers)
        if not any(secrets.compare_digest(token or '', c.token) for c in self.demo.calendly.values()):
            self.set_status(503)
            return self.finish({'title': 'Unavailable', 'message': 'the demo stands in for Calendly only '
                                'for its own connections; set SIDECAR_CALENDLY_API_URL for real ones'})
        if path != 'scheduled_events':
            self.set_status(404)
            return self.finish({'title': 'Resource Not Found',
                                'message': 'The server could not find the requested resource.'})
        self.finish({'collection': [], 'pagination': {
            'count': 0, 'next_page': None, 'previous_page': None,
            'next_page_token': None, 'previous_page_token': None}})
