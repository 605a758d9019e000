"""A local fake of the Calendly API v2 (Tornado on 127.0.0.1), for tests.

It follows /work/shared/calendly-v2.md: Bearer tokens, ``/users/me``,
``/scheduled_events`` (``organization`` or ``user`` required, ``status``,
``min_start_time``/``max_start_time``, ``sort``, ``count`` 1-100, opaque
``page_token``), ``/scheduled_events/{uuid}/invitees`` (no embedded
``scheduled_event``), ``/webhook_subscriptions`` (the signing key is never
echoed), the documented error bodies and 429 headers. Organization-wide
listing needs an admin token (else 403).

It also plays Calendly's webhook side: ``deliver()`` POSTs an envelope to
every matching subscription, signed over exactly the bytes it sends (with an
HMAC written here, independent of the sidecar's). Bodies keep the non-ASCII
characters and the ", " / ": " separators, so a receiver that re-serialises
JSON before hashing fails.

Faults are injected per path: ``fail(path, status, times, headers)`` and
``slow(path, seconds)``; every request is recorded in ``requests``.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

SIGNING_KEY = 'fake-signing-key-' + 'k' * 32
ENCRYPTION_KEY = 'test-encryption-key-' + 'e' * 32

ERRORS = {
    400: {'title': 'Invalid Argument', 'message': 'The supplied parameters are invalid.'},
    401: {'title': 'Unauthenticated', 'message': 'The access token is invalid'},
    403: {'title': 'Permission Denied', 'message': 'You do not have permission to access this resource.'},
    404: {'title': 'Resource Not Found', 'message': 'The server could not find the requested resource.'},
    409: {'title': 'Already Exists', 'message': 'Hook with this url already exists'},
    500: {'title': 'Internal Server Error', 'message': 'The server encountered an unexpected condition '
                                                       'that prevented it from fulfilling the request.'},
}


def ts(value: datetime) -> str:
    """Calendly's timestamp format: UTC with microseconds."""
    return value.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace('Z', '+00:00'))


def now_ts() -> str:
    return ts(datetime.now(timezone.utc))


def sign(key: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key.encode('utf-8'), str(timestamp).encode() + b'.' + body, hashlib.sha256).hexdigest()
    return f't={timestamp},v1={mac}'


class FakeCalendly:
    def __init__(self):
        self.base = ''
        self.tokens: Dict[str, Dict[str, Any]] = {}         # token -> user resource (+ 'admin')
        self.events: Dict[str, Dict[str, Any]] = {}         # uuid -> scheduled event
        self.invitees: Dict[str, List[Dict[str, Any]]] = {}  # event uuid -> invitees
        self.subscriptions: Dict[str, Dict[str, Any]] = {}  # uuid -> subscription (+ 'signing_key')
        self.requests: List[tuple] = []                      # (method, path, query)
        self.faults: List[Dict[str, Any]] = []
        self._page_tokens: Dict[str, int] = {}
        self._server = None
        self._http = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> 'FakeCalendly':
        app = tornado.web.Application([
            (r'/users/me', _Me, {'fake': self}),
            (r'/scheduled_events', _Events, {'fake': self}),
            (r'/scheduled_events/([^/]+)', _Event, {'fake': self}),
            (r'/scheduled_events/([^/]+)/invitees', _Invitees, {'fake': self}),
            (r'/webhook_subscriptions', _Subscriptions, {'fake': self}),
            (r'/webhook_subscriptions/([^/]+)', _Subscription, {'fake': self}),
        ])
        sockets = tornado.netutil.bind_sockets(0, '127.0.0.1')
        self._server = tornado.httpserver.HTTPServer(app)
        self._server.add_sockets(sockets)
        self.base = f'http://127.0.0.1:{sockets[0].getsockname()[1]}'
        self._http = AsyncHTTPClient(force_instance=True)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        if self._http is not None:
            self._http.close()

    # ----------------------------------------------------------------- accounts

    def add_user(self, token: str, *, name='Sam Ortiz', email='sam@clinic.example', admin=True,
                 organization: Optional[str] = None) -> Dict[str, Any]:
        user = {'uri': f'{self.base}/users/{uuid.uuid4()}', 'name': name, 'email': email,
                'timezone': 'America/Los_Angeles', 'slug': name.lower().replace(' ', '-'),
                'scheduling_url': f'https://calendly.com/{name.lower().replace(" ", "-")}',
                'current_organization': organization or f'{self.base}/organizations/{uuid.uuid4()}',
                'created_at': now_ts(), 'updated_at': now_ts()}
        self.tokens[token] = dict(user, admin=admin)
        return user

    def revoke(self, token: str) -> None:
        self.tokens.pop(token)

    def fail(self, path: str, status: int, times: int = 1, headers: Optional[Dict[str, str]] = None,
             method: str = 'GET') -> None:
        """The next ``times`` requests whose path matches ``path`` (a regex) answer ``status``."""
        self.faults.append({'path': path, 'status': status, 'times': times, 'headers': headers or {},
                            'method': method, 'delay': 0})

    def slow(self, path: str, seconds: float, times: int = 1) -> None:
        self.faults.append({'path': path, 'status': None, 'times': times, 'headers': {},
                            'method': 'GET', 'delay': seconds})

    def count(self, method: str, path_regex: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and re.fullmatch(path_regex, p))

    # ----------------------------------------------------------------- bookings

    def book(self, token: str, *, email: str, name: str, first_name: Optional[str] = None,
             last_name: Optional[str] = None, start: str = '2026-03-05T17:00:00.000000Z',
             minutes: int = 30, event_name: str = '30 Minute Consultation',
             timezone_name: str = 'America/Los_Angeles', location: Optional[Dict[str, Any]] = None,
             text_reminder_number: Optional[str] = None, questions=(), event: Optional[str] = None,
             old_invitee: Optional[str] = None, limit: int = 1) -> Dict[str, Any]:
        """A new invitee (API resource); ``event`` adds it to an existing (group) event."""
        host = self.tokens[token]
        if event is None:
            event_id = str(uuid.uuid4())
            begin = parse_ts(start)
            self.events[event_id] = {
                'uri': f'{self.base}/scheduled_events/{event_id}', 'name': event_name, 'status': 'active',
                'start_time': ts(begin), 'end_time': ts(begin + timedelta(minutes=minutes)),
                'event_type': f'{self.base}/event_types/{uuid.uuid4()}',
                'location': location or {'type': 'google_conference', 'status': 'pushed',
                                         'join_url': f'https://calendly.com/events/{event_id}/google_meet'},
                'invitees_counter': {'total': 0, 'active': 0, 'limit': limit},
                'created_at': now_ts(), 'updated_at': now_ts(),
                'event_memberships': [{'user': host['uri'], 'user_email': host['email'],
                                       'user_name': host['name']}],
                'event_guests': [],
                '_organization': host['current_organization'], '_user': host['uri'],
            }
            self.invitees[event_id] = []
        else:
            event_id = event.rsplit('/', 1)[-1]
        scheduled = self.events[event_id]
        invitee_id = str(uuid.uuid4())
        invitee = {
            'uri': f'{scheduled["uri"]}/invitees/{invitee_id}', 'email': email, 'name': name,
            'first_name': first_name, 'last_name': last_name, 'status': 'active',
            'questions_and_answers': [{'question': q, 'answer': a, 'position': i}
                                      for i, (q, a) in enumerate(questions)],
            'timezone': timezone_name, 'event': scheduled['uri'],
            'text_reminder_number': text_reminder_number, 'rescheduled': False,
            'old_invitee': old_invitee, 'new_invitee': None,
            'cancel_url': f'https://calendly.com/cancellations/{invitee_id}',
            'reschedule_url': f'https://calendly.com/reschedulings/{invitee_id}',
            'tracking': {'utm_campaign': None, 'utm_source': None, 'utm_medium': None,
                         'utm_content': None, 'utm_term': None, 'salesforce_uuid': None},
            'routing_form_submission': None, 'payment': None, 'no_show': None, 'reconfirmation': None,
            'scheduling_method': None, 'invitee_scheduled_by': None,
            'created_at': now_ts(), 'updated_at': now_ts(),
        }
        self.invitees[event_id].append(invitee)
        counter = scheduled['invitees_counter']
        counter['total'] += 1
        counter['active'] += 1
        scheduled['updated_at'] = now_ts()
        return invitee

    def invitee(self, uri: str) -> Dict[str, Any]:
        event_id = uri.split('/scheduled_events/')[1].split('/')[0]
        return next(i for i in self.invitees[event_id] if i['uri'] == uri)

    def event_of(self, invitee: Dict[str, Any]) -> Dict[str, Any]:
        return self.events[invitee['event'].rsplit('/', 1)[-1]]

    def cancel(self, uri: str, *, reason: Optional[str] = 'Schedule conflict', canceler_type='invitee',
               rescheduled=False, new_invitee: Optional[str] = None) -> Dict[str, Any]:
        invitee = self.invitee(uri)
        invitee.update(status='canceled', rescheduled=rescheduled, new_invitee=new_invitee,
                       updated_at=now_ts(),
                       cancellation={'canceled_by': invitee['name'] if canceler_type == 'invitee' else 'Sam Ortiz',
                                     'reason': reason, 'canceler_type': canceler_type,
                                     'created_at': now_ts()})
        scheduled = self.event_of(invitee)
        scheduled['invitees_counter']['active'] -= 1
        if scheduled['invitees_counter']['active'] == 0:
            scheduled['status'] = 'canceled'
        scheduled['updated_at'] = now_ts()
        return invitee

    def reschedule(self, token: str, uri: str, new_start: str):
        """Calendly's reschedule: a new invitee on a new event, the old one canceled. -> (old, new)"""
        old = self.invitee(uri)
        new = self.book(token, email=old['email'], name=old['name'], first_name=old['first_name'],
                        last_name=old['last_name'], start=new_start, event_name=self.event_of(old)['name'],
                        timezone_name=old['timezone'], old_invitee=uri)
        self.cancel(uri, reason=None, rescheduled=True, new_invitee=new['uri'])
        return old, new

    # ----------------------------------------------------------------- webhooks

    def envelope(self, kind: str, invitee: Dict[str, Any], created_by: Optional[str] = None) -> Dict[str, Any]:
        payload = dict(invitee, scheduled_event=_public(self.event_of(invitee)))
        return {'created_at': now_ts(), 'created_by': created_by or self.event_of(invitee)['_user'],
                'event': kind, 'payload': payload}

    @staticmethod
    def encode(envelope: Dict[str, Any]) -> bytes:
        return json.dumps(envelope, ensure_ascii=False).encode('utf-8')

    async def post(self, url: str, body: bytes, headers: Dict[str, str]):
        """POST like Calendly does (10 s connect, 15 s read); returns the response."""
        return await self._http.fetch(HTTPRequest(
            url, method='POST', body=body, headers={'Content-Type': 'application/json', **headers},
            connect_timeout=10, request_timeout=15), raise_error=False)

    async def post_signed(self, url: str, body: bytes, key: str, timestamp: Optional[int] = None):
        timestamp = int(time.time()) if timestamp is None else timestamp
        return await self.post(url, body, {'Calendly-Webhook-Signature': sign(key, timestamp, body)})

    async def deliver(self, kind: str, invitee: Dict[str, Any]) -> list:
        """Deliver one event to every active subscription that covers it; the responses."""
        scheduled = self.event_of(invitee)
        responses = []
        for sub in list(self.subscriptions.values()):
            covers = (sub['organization'] == scheduled['_organization']
                      and (sub['scope'] == 'organization' or sub['user'] == scheduled['_user']))
            if sub['state'] == 'active' and kind in sub['events'] and covers:
                body = self.encode(self.envelope(kind, invitee, sub['creator']))
                responses.append(await self.post_signed(sub['callback_url'], body, sub['signing_key']))
        return responses

    def subscribe(self, token: str, *, url: str, scope: str, signing_key: str,
                  events=('invitee.created', 'invitee.canceled')) -> Dict[str, Any]:
        user = self.tokens[token]
        sub_id = str(uuid.uuid4())
        sub = {'uri': f'{self.base}/webhook_subscriptions/{sub_id}', 'callback_url': url,
               'created_at': now_ts(), 'updated_at': now_ts(), 'retry_started_at': None, 'state': 'active',
               'events': list(events), 'scope': scope, 'organization': user['current_organization'],
               'user': user['uri'] if scope == 'user' else None, 'group': None, 'creator': user['uri'],
               'signing_key': signing_key}
        self.subscriptions[sub_id] = sub
        return sub

    # ----------------------------------------------------------------- paging

    def page(self, handler, items: List[Dict[str, Any]]) -> None:
        try:
            count = int(handler.get_argument('count', '20'))
        except ValueError:
            count = 0
        if not 1 <= count <= 100:
            return handler.error(400, details=[{'parameter': 'count', 'message': 'must be between 1 and 100'}])
        token = handler.get_argument('page_token', None)
        if token is not None and token not in self._page_tokens:
            return handler.error(400, details=[{'parameter': 'page_token', 'message': 'is invalid'}])
        offset = self._page_tokens.get(token, 0) if token else 0
        chunk = items[offset:offset + count]
        next_token = None
        if offset + count < len(items):
            next_token = secrets.token_urlsafe(24)
            self._page_tokens[next_token] = offset + count
        query = {k: v[-1].decode() for k, v in handler.request.query_arguments.items() if k != 'page_token'}
        next_page = (f'{self.base}{handler.request.path}?{urlencode(dict(query, page_token=next_token))}'
                     if next_token else None)
        handler.finish({'collection': chunk, 'pagination': {
            'count': len(chunk), 'next_page': next_page, 'next_page_token': next_token,
            'previous_page': None, 'previous_page_token': None}})


def _public(event: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in event.items() if not k.startswith('_')}


class _Handler(tornado.web.RequestHandler):
    def initialize(self, fake: FakeCalendly):
        self.fake = fake

    async def prepare(self):
        self.fake.requests.append((self.request.method, self.request.path,
                                   {k: v[-1].decode() for k, v in self.request.query_arguments.items()}))
        for fault in self.fake.faults:
            if (fault['times'] > 0 and fault['method'] == self.request.method
                    and re.fullmatch(fault['path'], self.request.path)):
                fault['times'] -= 1
                if fault['delay']:
                    await asyncio.sleep(fault['delay'])
                    break
                self.set_status(fault['status'])
                for k, v in fault['headers'].items():
                    self.set_header(k, v)
                if fault['status'] == 429:
                    # no documented body; the rate-limit headers are the contract
                    self.set_header('X-RateLimit-Limit', '500')
                    self.set_header('X-RateLimit-Remaining', '0')
                    if 'X-RateLimit-Reset' not in fault['headers']:
                        self.set_header('X-RateLimit-Reset', '60')
                    self.finish()
                else:
                    self.finish(ERRORS.get(fault['status'], ERRORS[500]))
                return
        auth = self.request.headers.get('Authorization', '')
        self.user = self.fake.tokens.get(auth[len('Bearer '):]) if auth.startswith('Bearer ') else None
        if self.user is None:
            self.error(401)

    def error(self, status: int, details=None):
        self.set_status(status)
        body = dict(ERRORS[status])
        if details:
            body['details'] = details
        self.finish(body)


class _Me(_Handler):
    def get(self):
        self.finish({'resource': {k: v for k, v in self.user.items() if k != 'admin'}})


class _Events(_Handler):
    def get(self):
        organization, user = self.get_argument('organization', None), self.get_argument('user', None)
        if not organization and not user:
            return self.error(400, [{'parameter': 'organization', 'message': 'organization or user is required'}])
        if organization and (organization != self.user['current_organization'] or not self.user['admin']):
            return self.error(403)
        if user and user != self.user['uri'] and not self.user['admin']:
            return self.error(403)
        status = self.get_argument('status', None)
        if status not in (None, 'active', 'canceled'):
            return self.error(400, [{'parameter': 'status', 'message': 'must be active or canceled'}])
        low, high = self.get_argument('min_start_time', None), self.get_argument('max_start_time', None)
        events = [e for e in self.fake.events.values()
                  if (not organization or e['_organization'] == organization)
                  and (not user or e['_user'] == user)
                  and (status is None or e['status'] == status)
                  and (low is None or parse_ts(e['start_time']) >= parse_ts(low))
                  and (high is None or parse_ts(e['start_time']) < parse_ts(high))]
        events.sort(key=lambda e: e['start_time'],
                    reverse=self.get_argument('sort', 'start_time:asc') == 'start_time:desc')
        self.fake.page(self, [_public(e) for e in events])


class _Event(_Handler):
    def get(self, event_id):
        event = self.fake.events.get(event_id)
        if event is None or event['_organization'] != self.user['current_organization']:
            return self.error(404)
        self.finish({'resource': _public(event)})


class _Invitees(_Handler):
    def get(self, event_id):
        event = self.fake.events.get(event_id)
        if event is None or event['_organization'] != self.user['current_organization']:
            return self.error(404)
        status, email = self.get_argument('status', None), self.get_argument('email', None)
        items = [i for i in self.fake.invitees[event_id]
                 if (status is None or i['status'] == status) and (email is None or i['email'] == email)]
        items.sort(key=lambda i: i['created_at'],
                   reverse=self.get_argument('sort', 'created_at:asc') == 'created_at:desc')
        self.fake.page(self, items)


class _Subscriptions(_Handler):
    def post(self):
        try:
            body = json.loads(self.request.body)
        except ValueError:
            return self.error(400)
        missing = [k for k in ('url', 'events', 'organization', 'scope') if not body.get(k)]
        if body.get('scope') == 'user' and not body.get('user'):
            missing.append('user')
        if missing:
            return self.error(400, [{'parameter': k, 'message': 'is required'} for k in missing])
        if body['organization'] != self.user['current_organization']:
            return self.error(403)
        if any(s['callback_url'] == body['url'] for s in self.fake.subscriptions.values()):
            return self.error(409)
        sub = self.fake.subscribe(self.request.headers['Authorization'][len('Bearer '):], url=body['url'],
                                  scope=body['scope'], events=body['events'],
                                  signing_key=body.get('signing_key') or secrets.token_urlsafe(32))
        self.set_status(201)
        self.finish({'resource': {k: v for k, v in sub.items() if k != 'signing_key'}})


class _Subscription(_Handler):
    def delete(self, sub_id):
        if self.fake.subscriptions.pop(sub_id, None) is None:
            return self.error(404)
        self.set_status(204)
        self.finish()


# --------------------------------------------------------------------------- test helpers

def calendly_env(fake: FakeCalendly, **extra) -> Dict[str, str]:
    """Sidecar settings pointing at the fake; polls are started by the tests themselves."""
    env = {'SIDECAR_CALENDLY_API_URL': fake.base, 'SIDECAR_CALENDLY_ENCRYPTION_KEY': ENCRYPTION_KEY,
           'SIDECAR_CALENDLY_POLL_SECONDS': '86400', 'SIDECAR_CALENDLY_FIRST_POLL_SECONDS': '86400'}
    env.update(extra)
    return env


def component_of(sidecar):
    from sidecar.calendly.component import CalendlyComponent
    return next(c for c in sidecar.components if isinstance(c, CalendlyComponent))


async def connect(sidecar, fake: FakeCalendly, token: str, *, organization_id='1', scope='organization',
                  signing_key: Optional[str] = SIGNING_KEY):
    """Link ``token``'s Calendly account to a CRM organization, as `calendly connect --webhook` does."""
    from sidecar.calendly.component import webhook_path
    component = component_of(sidecar)
    user = fake.tokens[token]
    subject = user['current_organization'] if scope == 'organization' else user['uri']
    connection = await component.store.save(
        organization_id=str(organization_id), scope=scope, subject=subject,
        calendly_organization=user['current_organization'], calendly_user=user['uri'], token=token)
    if signing_key is not None:
        sub = fake.subscribe(token, url=sidecar.url + webhook_path(connection.id), scope=scope,
                             signing_key=signing_key)
        await component.store.set_webhook(connection.id, sub['uri'], signing_key)
    return await component.store.get(connection.id)
