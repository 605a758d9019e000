"""The demo's Calendly pieces: demo connections, a realistic webhook body, the stand-in URL.

Used by ``demo_web.py`` (the booking simulator and the stand-in the poller
talks to) and ``demo.py``. Nothing here is mounted by ``serve``.
"""
from __future__ import annotations

import dataclasses
import secrets
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, Optional

from ..calendly.component import Calendly

CALENDLY_API = 'https://api.calendly.com'
CALENDLY_STAND_IN = '/demo/calendly-api'


def local_url(host: str, port: int) -> str:
    """This process's base URL as seen from itself."""
    host = '127.0.0.1' if host in ('', '0.0.0.0', '::') else host
    return f'http://{"[%s]" % host if ":" in host else host}:{port}'


def with_calendly_stand_in(settings):
    """``settings`` whose Calendly API is this process's stand-in (the port is chosen now if 0)."""
    port = settings.port
    if port == 0:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
    return dataclasses.replace(settings, port=port,
                               calendly_api_url=local_url(settings.host, port) + CALENDLY_STAND_IN)


@dataclasses.dataclass(frozen=True)
class CalendlyLink:
    """The demo's Calendly connection of one organization (its secrets stay in memory)."""
    organization_id: str
    connection_id: str
    signing_key: str = dataclasses.field(repr=False)
    token: str = dataclasses.field(repr=False)


def _ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def invitee_created(*, first_name: str, last_name: str, email: str, phone: Optional[str] = None,
                    start: Optional[datetime] = None, host_name: str = 'Inès Moreau',
                    host_email: str = 'ines@lumiere.example') -> Dict[str, Any]:
    """An ``invitee.created`` webhook envelope with the keys Calendly documents.

    The slot is tomorrow at 10:00 Paris time unless ``start`` is given; every
    call makes a new scheduled event and invitee (new URIs).
    """
    if start is None:
        from zoneinfo import ZoneInfo
        paris = ZoneInfo('Europe/Paris')
        start = (datetime.now(paris) + timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0)
    now = datetime.now(timezone.utc)
    event_id, invitee_id = uuid.uuid4(), uuid.uuid4()
    host = f'{CALENDLY_API}/users/{uuid.uuid4()}'
    event_uri = f'{CALENDLY_API}/scheduled_events/{event_id}'
    name = f'{first_name} {last_name}'.strip() or email.split('@', 1)[0]
    scheduled_event = {
        'uri': event_uri, 'name': 'Premier essayage', 'status': 'active',
        'start_time': _ts(start), 'end_time': _ts(start + timedelta(minutes=45)),
        'event_type': f'{CALENDLY_API}/event_types/{uuid.uuid4()}',
        'location': {'type': 'physical', 'location': 'Atelier Lumière, 12 rue des Lilas, Lyon'},
        'invitees_counter': {'total': 1, 'active': 1, 'limit': 1},
        'created_at': _ts(now), 'updated_at': _ts(now),
        'event_memberships': [{'user': host, 'user_email': host_email, 'user_name': host_name}],
        'event_guests': [],
    }
    questions = [{'question': 'Date du mariage', 'answer': 'Juin prochain', 'position': 0}]
    if phone:
        questions.append({'question': 'Téléphone', 'answer': phone, 'position': 1})
    payload = {
        'cancel_url': f'https://calendly.com/cancellations/{invitee_id}', 'created_at': _ts(now),
        'email': email, 'event': event_uri, 'first_name': first_name or None, 'last_name': last_name or None,
        'name': name, 'new_invitee': None, 'old_invitee': None, 'questions_and_answers': questions,
        'reschedule_url': f'https://calendly.com/reschedulings/{invitee_id}', 'rescheduled': False,
        'status': 'active', 'text_reminder_number': None, 'timezone': 'Europe/Paris',
        'tracking': {'utm_campaign': None, 'utm_source': None, 'utm_medium': None, 'utm_content': None,
                     'utm_term': None, 'salesforce_uuid': None},
        'updated_at': _ts(now), 'uri': f'{event_uri}/invitees/{invitee_id}',
        'scheduled_event': scheduled_event,
    }
    return {'created_at': _ts(now), 'created_by': host, 'event': 'invitee.created', 'payload': payload}


async def create_calendly_links(settings, organization_ids: Iterable[int]) -> list:
    """Create (or refresh) one demo Calendly connection per organization.

    Uses the Calendly store as ``crm-realtime calendly connect --signing-key``
    does, with a generated signing key. The connection belongs to no real
    Calendly account; its access token is random (the stand-in accepts it).
    """
    calendly = Calendly(settings)
    links = []
    try:
        await calendly.open()
        for org in organization_ids:
            subject = f'{CALENDLY_API}/organizations/{uuid.uuid5(uuid.NAMESPACE_URL, f"crm-realtime-demo/{org}")}'
            token = 'demo-' + secrets.token_urlsafe(24)
            connection = await calendly.store.save(
                organization_id=str(org), scope='organization', subject=subject,
                calendly_organization=subject,
                calendly_user=f'{CALENDLY_API}/users/{uuid.uuid5(uuid.NAMESPACE_URL, f"crm-realtime-demo/user/{org}")}',
                token=token)
            key = secrets.token_urlsafe(32)
            await calendly.store.set_webhook(connection.id, None, key)
            links.append(CalendlyLink(str(org), connection.id, key, token))
    finally:
        await calendly.close()
    return links
