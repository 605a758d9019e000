"""A small Calendly API v2 client on tornado's AsyncHTTPClient.

Failure policy (carried by ``CalendlyClient._request``):

* **429**: wait what ``Retry-After`` says (seconds or an HTTP date), else
  ``X-RateLimit-Reset`` (seconds until the window resets; a Unix time is
  accepted too), else 60 s, then retry. A wait longer than
  ``RetryPolicy.max_rate_wait`` is not slept through: ``RateLimited`` is raised
  with the advised delay and the caller (the poller) tries again next time.
* **5xx, timeouts, refused connections**: retried after a jittered
  exponential backoff (``backoff_base`` * 2^n, capped at ``backoff_max``), at
  most ``attempts`` requests in all; then ``Unavailable``.
* **401**: ``Unauthorized`` at once, never retried: the token is revoked or
  expired and only a new one helps (the poller marks the connection).
* **403, 404, other 4xx**: ``CalendlyError`` (subclass by status) at once.

Calendly's URIs are only used for their identifiers: every request goes to
``api_url``, so a URI in a payload can never send the token to another host.
The token is sent in the Authorization header and appears in no log line and
no exception text.
"""
from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import logging
import random
import re
import time
from typing import Any, AsyncIterator, Dict, List, Optional
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger('crm_realtime.calendly.client')

_ID = re.compile(r'^[A-Za-z0-9_-]+$')


class CalendlyError(Exception):
    """Calendly answered an error; ``str()`` is log text (status, title, message)."""

    def __init__(self, status: int, title: str = '', message: str = '', retry_after: Optional[float] = None):
        self.status, self.title, self.message, self.retry_after = status, title, message, retry_after
        super().__init__(f'Calendly answered {status}' + (f' {title}' if title else '')
                         + (f': {message}' if message else ''))


class Unauthorized(CalendlyError):
    """401: the token is invalid, expired or revoked."""


class Forbidden(CalendlyError):
    """403: the token may not see this resource (e.g. organization scope without admin rights)."""


class NotFound(CalendlyError):
    """404."""


class RateLimited(CalendlyError):
    """429 whose advised wait is longer than we are willing to sleep."""


class Unavailable(CalendlyError):
    """5xx, timeouts or network errors persisted through every retry."""


_BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound}


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_rate_wait: float = 120.0
    connect_timeout: float = 10.0
    request_timeout: float = 30.0


def retry_delay(headers, now: Optional[float] = None) -> Optional[float]:
    """Seconds a 429 asks us to wait, from Retry-After or X-RateLimit-Reset."""
    now = time.time() if now is None else now
    value = headers.get('Retry-After')
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            pass
    value = headers.get('X-RateLimit-Reset')
    if value:
        try:
            seconds = float(value)
        except ValueError:
            return None
        # a value that large is an epoch time, not a countdown
        return max(0.0, seconds - now) if seconds > 1e9 else max(0.0, seconds)
    return None


def identifier(uri: str, collection: str) -> str:
    """The last path segment of ``.../<collection>/<id>`` (validated)."""
    head, sep, tail = (uri or '').rstrip('/').rpartition('/' + collection + '/')
    if not sep or not _ID.match(tail):
        raise ValueError(f'{uri!r} is not a Calendly {collection} URI')
    return tail


class CalendlyClient:
    """One token's view of the Calendly API (see the module docstring for failures)."""

    def __init__(self, http: AsyncHTTPClient, api_url: str, token: str, *,
                 policy: RetryPolicy = RetryPolicy(), sleep=asyncio.sleep):
        self._http = http
        self._api = api_url.rstrip('/')
        self._token = token
        self._policy = policy
        self._sleep = sleep

    def __repr__(self):
        return f'CalendlyClient({self._api!r})'

    async def me(self) -> Dict[str, Any]:
        return (await self._request('GET', '/users/me'))['resource']

    async def scheduled_events(self, *, organization: Optional[str] = None, user: Optional[str] = None,
                               min_start_time: Optional[str] = None, count: int = 100
                               ) -> AsyncIterator[Dict[str, Any]]:
        """Every scheduled event (all statuses), oldest start first, across all pages."""
        query = {'count': count, 'sort': 'start_time:asc'}
        if organization:
            query['organization'] = organization
        if user:
            query['user'] = user
        if min_start_time:
            query['min_start_time'] = min_start_time
        async for item in self._pages('/scheduled_events', query):
            yield item

    async def invitees(self, event_uri: str, count: int = 100) -> List[Dict[str, Any]]:
        """Every invitee of one scheduled event (all statuses), across all pages."""
        path = f'/scheduled_events/{identifier(event_uri, "scheduled_events")}/invitees'
        return [item async for item in self._pages(path, {'count': count})]

    async def scheduled_event(self, event_uri: str) -> Dict[str, Any]:
        path = f'/scheduled_events/{identifier(event_uri, "scheduled_events")}'
        return (await self._request('GET', path))['resource']

    async def create_webhook_subscription(self, *, url: str, organization: str, scope: str,
                                          user: Optional[str], signing_key: str,
                                          events=('invitee.created', 'invitee.canceled')) -> Dict[str, Any]:
        body = {'url': url, 'events': list(events), 'organization': organization, 'scope': scope,
                'signing_key': signing_key}
        if scope == 'user':
            body['user'] = user
        return (await self._request('POST', '/webhook_subscriptions', body=body))['resource']

    async def delete_webhook_subscription(self, uri: str) -> None:
        await self._request('DELETE', f'/webhook_subscriptions/{identifier(uri, "webhook_subscriptions")}')

    async def _pages(self, path: str, query: Dict[str, Any]) -> AsyncIterator[Dict[str, Any]]:
        # follow next_page_token rather than next_page: the URL would come from the response
        token = None
        while True:
            page = await self._request('GET', path, dict(query, **({'page_token': token} if token else {})))
            for item in page.get('collection') or ():
                yield item
            token = (page.get('pagination') or {}).get('next_page_token')
            if not token:
                return

    async def _request(self, method: str, path: str, query: Optional[Dict[str, Any]] = None,
                       body: Optional[Dict[str, Any]] = None) -> Any:
        url = self._api + path + ('?' + urlencode(query) if query else '')
        p = self._policy
        for attempt in range(1, p.attempts + 1):
            request = HTTPRequest(
                url, method=method,
                headers={'Authorization': f'Bearer {self._token}', 'Accept': 'application/json',
                         **({'Content-Type': 'application/json'} if body is not None else {})},
                body=None if body is None else json.dumps(body),
                connect_timeout=p.connect_timeout, request_timeout=p.request_timeout)
            try:
                response = await self._http.fetch(request, raise_error=False)
                status, failure = response.code, None
            except (HTTPClientError, OSError) as exc:
                # raise_error=False still raises for timeouts (599) and network errors
                response, status, failure = None, 599, exc
            if 200 <= status < 300:
                return json.loads(response.body) if response.body else None
            last = attempt == p.attempts
            if status == 429:
                wait = retry_delay(response.headers)
                wait = 60.0 if wait is None else wait
                if wait > p.max_rate_wait or last:
                    raise RateLimited(429, 'Too Many Requests', f'retry after {wait:.0f} s', retry_after=wait)
                log.info('Calendly rate limit on %s %s; retrying in %.1f s', method, path, wait)
                await self._sleep(wait)
                continue
            if status >= 500:
                failure = failure or (response.error if status == 599 else None)
                reason = f'{failure.__class__.__name__}: {failure}' if failure else f'HTTP {status}'
                if last:
                    raise Unavailable(status, 'Unavailable', f'{reason} after {attempt} attempts')
                delay = min(p.backoff_max, p.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning('Calendly %s %s failed (%s); retry %d in %.1f s',
                            method, path, reason, attempt, delay)
                await self._sleep(delay)
                continue
            title, message = _error_text(response.body)
            raise _BY_STATUS.get(status, CalendlyError)(status, title, message)
        raise AssertionError('unreachable')  # pragma: no cover


def _error_text(body: Optional[bytes]):
    try:
        data = json.loads(body or b'')
        return str(data.get('title') or ''), str(data.get('message') or '')
    except (ValueError, AttributeError):
        return '', ''
