"""``POST /webhooks/calendly/<connection id>``: Calendly's webhook deliveries.

Failure policy (what Calendly gets back; the reason goes to the log, the
response carries only a stable ``{"error": ...}``):

* 413 - the body is larger than ``SIDECAR_CALENDLY_WEBHOOK_MAX_BYTES``. A
  declared Content-Length is refused before the body is read; a chunked body
  is answered as soon as it runs past the cap, and the connection is closed
  (tornado stops reading it at a hard ceiling of the cap plus 64 KiB).
* 404 - no connection has that id.
* 401 - the signature is missing, malformed, older or newer than 3 minutes,
  or wrong, or the connection has no signing key. Nothing is parsed or written.
* 400 - the signed body is not JSON, nests deeper than ``MAX_NESTING``
  levels, or is JSON but not a booking: an invitee payload lacks what a
  booking needs or has a field of the wrong type (the message names the
  field). Retrying cannot fix it; Calendly redelivers anyway, and the poller
  reads the same invitee from the API.
* 200 ``{"status": "ignored"}`` - an event kind other than invitee.created
  and invitee.canceled.
* 200 ``{"status": <outcome>}`` - applied, or ``duplicate`` when it already
  was. An applied booking is recognised before anything that can fail.
* 503 with Retry-After - only for what a retry can fix: the database (or,
  for a payload without its ``scheduled_event``, Calendly) cannot be reached
  or refused the write (a constraint, a missing grant, an unwatched prospect
  table, all fixed on the operator's side): nothing was written, and
  Calendly's redelivery or the next poll applies it later.
* 500 - anything else (a defect of the sidecar): nothing was written; the
  log has the exception's class and message.

The booking is applied before answering: one short transaction, so the
response comes well within Calendly's 15 s read timeout.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import psycopg
import psycopg_pool
import tornado.web

from . import booking as bk
from .client import CalendlyError
from .crm import MappingError
from .signature import HEADER, SignatureError, verify
from .store import log_text

log = logging.getLogger('crm_realtime.calendly.webhook')

ROUTE = r'/webhooks/calendly/([0-9a-fA-F-]{36})'
#: how far past the cap tornado keeps reading a chunked body before it drops the connection
HARD_CEILING_SLACK = 64 * 1024
#: deepest nesting of arrays and objects accepted in a body (Calendly's go about five deep)
MAX_NESTING = 32
#: what a retry can fix: the database or Calendly out of reach, or refusing what the operator can change
RETRYABLE = (psycopg.Error, psycopg_pool.PoolTimeout, CalendlyError, MappingError, OSError,
             asyncio.TimeoutError)

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b'[]{}')


def nesting_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings do not count).

    Checked before ``json.loads``, whose recursion a deep enough body exhausts.
    """
    brackets = _JSON_STRING.sub(b'', body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for b in brackets:
        if b in b'[{':
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


@tornado.web.stream_request_body
class CalendlyWebhookHandler(tornado.web.RequestHandler):
    def initialize(self, component):
        self.component = component
        self.max_bytes = component.settings.calendly_webhook_max_bytes

    def set_default_headers(self):
        self.set_header('Cache-Control', 'no-store')

    def prepare(self):
        self._chunks, self._size = [], 0
        self._answered = False      # set when a response was sent (e.g. 413 while reading)
        # A hard bound on what tornado reads even for a chunked body without
        # Content-Length; above the cap, so data_received can answer 413 first.
        self.request.connection.set_max_body_size(self.max_bytes + HARD_CEILING_SLACK)
        length = self.request.headers.get('Content-Length', '')
        if length.isdigit() and int(length) > self.max_bytes:
            self._refuse(413, 'body too large', f'Content-Length {length} > {self.max_bytes}')

    def data_received(self, chunk: bytes) -> None:
        if self._answered:
            return
        self._size += len(chunk)
        if self._size <= self.max_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks = []
            self._refuse(413, 'body too large', f'more than {self.max_bytes} bytes (chunked)')

    async def post(self, connection_id: str) -> None:
        if self._answered:  # refused while the body was still arriving
            return
        body = b''.join(self._chunks)
        component = self.component
        try:
            connection = await component.store.get(connection_id)
            signing_key = None if connection is None else component.store.signing_key(connection)
        except Exception as exc:  # noqa: BLE001 - database down or undecryptable key
            return self._unavailable(connection_id, exc)
        if connection is None:
            return self._refuse(404, 'unknown connection', f'no connection {connection_id}')
        if signing_key is None:
            return self._refuse(401, 'invalid signature', 'the connection has no signing key '
                                '(connect it with --webhook or --signing-key)')
        try:
            verify(self.request.headers.get(HEADER), body, signing_key, time.time())
        except SignatureError as exc:
            return self._refuse(401, 'invalid signature', str(exc))

        if nesting_depth(body) > MAX_NESTING:
            return self._refuse(400, f'body nests deeper than {MAX_NESTING} levels',
                                f'signed body nests deeper than {MAX_NESTING} levels')
        try:
            envelope = json.loads(body)
        except (ValueError, RecursionError):
            return self._refuse(400, 'body is not JSON', 'signed body is not JSON')
        try:
            split = bk.split_webhook(envelope)
        except bk.BookingError as exc:
            return self._refuse(400, str(exc), str(exc))
        if split is None:
            log.info('calendly webhook %s: event %r ignored', connection_id, envelope.get('event'))
            return self._answer(200, {'status': 'ignored'})
        kind, payload = split

        org = connection.organization_id
        try:
            if isinstance(payload.get('uri'), str) and await component.already_applied(
                    org, kind, payload['uri']):
                return self._answer(200, {'status': 'duplicate'})
            scheduled_event = payload.get('scheduled_event')
            if not isinstance(scheduled_event, dict) and isinstance(payload.get('event'), str):
                scheduled_event = await component.fetch_scheduled_event(connection, payload['event'])
            booking = bk.from_invitee(kind, payload, scheduled_event)
        except (bk.BookingError, ValueError) as exc:
            return self._refuse(400, str(exc), str(exc))
        except RETRYABLE as exc:
            return self._unavailable(connection_id, exc)
        except Exception as exc:  # noqa: BLE001 - a defect; a retry would meet it again
            return self._failed(connection_id, exc)
        try:
            outcome = await component.apply(connection, booking, 'webhook')
        except RETRYABLE as exc:  # rolled back; redelivery or the poll retries it
            return self._unavailable(connection_id, exc)
        except Exception as exc:  # noqa: BLE001 - rolled back too
            return self._failed(connection_id, exc)
        log.info('calendly webhook %s: %s %s -> %s', connection_id, kind, booking.invitee_uri,
                 outcome.outcome)
        self._answer(200, {'status': outcome.outcome})

    def _answer(self, status: int, body) -> None:
        self._answered = True
        self.set_status(status)
        self.finish(body)

    def _refuse(self, status: int, client_text: str, log_text: str) -> None:
        log.warning('calendly webhook %s refused with %d: %s', self.path_args[0] if self.path_args
                    else '?', status, log_text)
        self._answer(status, {'error': client_text})

    def _unavailable(self, connection_id: str, exc: Exception) -> None:
        log.error('calendly webhook %s: answered 503, nothing written (%s)', connection_id, log_text(exc))
        log.debug('calendly webhook %s: 503 cause', connection_id, exc_info=exc)
        self.set_header('Retry-After', '60')
        self._answer(503, {'error': 'temporarily unavailable'})

    def _failed(self, connection_id: str, exc: Exception) -> None:
        log.error('calendly webhook %s: answered 500, nothing written (%s)', connection_id, log_text(exc))
        log.debug('calendly webhook %s: 500 cause', connection_id, exc_info=exc)
        self._answer(500, {'error': 'internal error'})
