"""What a Calendly invitee means for the CRM (pure: no I/O, no framework).

A webhook delivers one ``(kind, invitee)``; a poll sees an invitee and its
scheduled event and derives the same bookings a webhook would have carried:
every invitee was created, and a canceled one was then canceled. Both paths
build a ``Booking`` here, so they write the same notes and notifications.

Texts are French, like the SPA they are shown in. Each note line names its
own slot, so the lines of a reschedule read correctly in either order.
"""
from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

CREATED = 'invitee.created'
CANCELED = 'invitee.canceled'
KINDS = (CREATED, CANCELED)

SOURCE = 'calendly'
TYPE_PROSPECT_CREATED = 'calendly_prospect_created'
TYPE_APPOINTMENT_BOOKED = 'calendly_appointment_booked'
TITLE_PROSPECT_CREATED = 'Nouveau prospect Calendly'
TITLE_APPOINTMENT_BOOKED = 'Nouveau rendez-vous Calendly'

_DAYS = ('lundi', 'mardi', 'mercredi', 'jeudi', 'vendredi', 'samedi', 'dimanche')
_MONTHS = ('janvier', 'février', 'mars', 'avril', 'mai', 'juin', 'juillet', 'août',
           'septembre', 'octobre', 'novembre', 'décembre')
_LOCATION_LABELS = {
    'google_conference': 'Google Meet', 'zoom': 'Zoom', 'zoom_conference': 'Zoom',
    'microsoft_teams_conference': 'Microsoft Teams', 'webex_conference': 'Webex',
    'gotomeeting': 'GoTo Meeting', 'gotomeeting_conference': 'GoTo Meeting',
    'outbound_call': 'Téléphone', 'inbound_call': 'Téléphone',
}
_PHONE_QUESTION = re.compile(
    r'\b(phone|t[ée]l[ée]phone|t[ée]l|mobile|portable|cell(ular)?|gsm|whatsapp)\b', re.I)


class BookingError(ValueError):
    """The payload lacks something a booking needs (message names the field)."""


@dataclasses.dataclass(frozen=True)
class Booking:
    kind: str                       # CREATED | CANCELED
    invitee_uri: str
    event_uri: str
    email: str                      # stripped and lower-cased
    firstname: str
    lastname: str
    name: str                       # as the invitee typed it, for messages
    phone: Optional[str]
    timezone: str                   # IANA name the slot is shown in
    event_name: str
    start_time: datetime            # aware, UTC
    start_time_text: str            # as Calendly sent it (goes into notification meta)
    location: Optional[str]
    rescheduled: bool = False
    old_invitee: Optional[str] = None
    new_invitee: Optional[str] = None
    canceled_by: Optional[str] = None
    canceler_type: Optional[str] = None
    cancel_reason: Optional[str] = None

    def as_created(self) -> 'Booking':
        """The creation this booking implies (a cancellation implies a booking)."""
        return dataclasses.replace(self, kind=CREATED)


# --------------------------------------------------------------------------- parsing

def split_webhook(envelope: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(kind, invitee payload)`` of a webhook body, or None for kinds we ignore."""
    if not isinstance(envelope, dict):
        raise BookingError('the body is not a JSON object')
    kind = envelope.get('event')
    if kind not in KINDS:
        return None
    payload = envelope.get('payload')
    if not isinstance(payload, dict):
        raise BookingError('payload is missing or not an object')
    return kind, payload


def from_invitee(kind: str, invitee: Dict[str, Any], scheduled_event: Dict[str, Any]) -> Booking:
    """Build the booking of one invitee (webhook payload or API resource).

    Every field read is type-checked: a value of the wrong JSON type is a
    BookingError naming it, like a missing one (never an AttributeError).
    """
    if kind not in KINDS:
        raise BookingError(f'kind {kind!r} is not one of {", ".join(KINDS)}')
    if not isinstance(invitee, dict):
        raise BookingError('payload is missing or not an object')
    uri = _text(invitee, 'uri', 'payload.uri')
    email = _text(invitee, 'email', 'payload.email').strip().lower()
    if '@' not in email:
        raise BookingError('payload.email is not an email address')
    if not isinstance(scheduled_event, dict):
        raise BookingError('scheduled_event is missing or not an object')
    event_uri = _opt_text(invitee, 'event', 'payload.event') or _opt_text(scheduled_event, 'uri',
                                                                            'scheduled_event.uri')
    if not event_uri:
        raise BookingError('payload.event is missing')
    start_text = _text(scheduled_event, 'start_time', 'scheduled_event.start_time')
    name = (_opt_text(invitee, 'name', 'payload.name') or '').strip()
    firstname, lastname = split_name(_opt_text(invitee, 'first_name', 'payload.first_name'),
                                     _opt_text(invitee, 'last_name', 'payload.last_name'), name, email)
    cancellation = invitee.get('cancellation')
    if cancellation is None:
        cancellation = {}
    elif not isinstance(cancellation, dict):
        raise BookingError('payload.cancellation is not an object')
    rescheduled = invitee.get('rescheduled')
    if rescheduled is not None and not isinstance(rescheduled, bool):
        raise BookingError('payload.rescheduled is not a boolean')
    return Booking(
        kind=kind, invitee_uri=uri, event_uri=event_uri, email=email,
        firstname=firstname, lastname=lastname, name=name or f'{firstname} {lastname}'.strip(),
        phone=find_phone(invitee), timezone=_opt_text(invitee, 'timezone', 'payload.timezone') or 'UTC',
        event_name=(_opt_text(scheduled_event, 'name', 'scheduled_event.name') or 'Rendez-vous').strip(),
        start_time=parse_time(start_text), start_time_text=start_text,
        location=location_text(scheduled_event.get('location')),
        rescheduled=bool(rescheduled),
        old_invitee=_opt_text(invitee, 'old_invitee', 'payload.old_invitee'),
        new_invitee=_opt_text(invitee, 'new_invitee', 'payload.new_invitee'),
        canceled_by=_opt_text(cancellation, 'canceled_by', 'payload.cancellation.canceled_by'),
        canceler_type=_opt_text(cancellation, 'canceler_type', 'payload.cancellation.canceler_type'),
        cancel_reason=_opt_text(cancellation, 'reason', 'payload.cancellation.reason'),
    )


def from_poll(invitee: Dict[str, Any], scheduled_event: Dict[str, Any]) -> List[Booking]:
    """The webhooks an invitee seen by a poll stands for, in the order they happened."""
    created = from_invitee(CREATED, invitee, scheduled_event)
    if invitee.get('status') == 'canceled':
        return [created, from_invitee(CANCELED, invitee, scheduled_event)]
    return [created]


def _text(obj: Dict[str, Any], key: str, label: str) -> str:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BookingError(f'{label} is not a string')
    if not isinstance(value, str) or not value.strip():
        raise BookingError(f'{label} is missing')
    return value


def _opt_text(obj: Dict[str, Any], key: str, label: str) -> Optional[str]:
    """A string field that may be absent or null (None then)."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BookingError(f'{label} is not a string')
    return value


def parse_time(value: str) -> datetime:
    if not isinstance(value, str):
        raise BookingError(f'{value!r} is not an ISO-8601 time')
    try:
        parsed = datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
        raise BookingError(f'{value!r} is not an ISO-8601 time') from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def split_name(first: Optional[str], last: Optional[str], name: str, email: str) -> Tuple[str, str]:
    """first/last when the event type asked for them, else ``name`` split at its first space."""
    first, last = (first or '').strip(), (last or '').strip()
    if first or last:
        return first, last
    if name:
        head, _, tail = name.partition(' ')
        return head, tail.strip()
    return email.split('@', 1)[0], ''


def find_phone(invitee: Dict[str, Any]) -> Optional[str]:
    """``text_reminder_number``, else the answer to a question that asks for a phone."""
    number = invitee.get('text_reminder_number')
    if isinstance(number, str) and number.strip():
        return number.strip()
    answers = invitee.get('questions_and_answers')
    if answers is not None and not isinstance(answers, list):
        raise BookingError('payload.questions_and_answers is not a list')
    for qa in answers or ():
        if not isinstance(qa, dict):
            continue
        question, answer = qa.get('question') or '', qa.get('answer') or ''
        if (isinstance(answer, str) and _PHONE_QUESTION.search(str(question))
                and sum(c.isdigit() for c in answer) >= 6):
            return answer.strip()
    return None


def location_text(location: Any) -> Optional[str]:
    if not isinstance(location, dict):
        return None
    kind = location.get('type')
    label = _LOCATION_LABELS.get(kind) if isinstance(kind, str) else None
    detail = location.get('join_url') or location.get('location')
    detail = detail.strip() if isinstance(detail, str) else ''
    if label and detail:
        return f'{label} : {detail}'
    return detail or label


# --------------------------------------------------------------------------- texts

def slot_text(booking: Booking) -> str:
    """'jeudi 5 mars 2026 à 09:00 (America/Los_Angeles)': the start in the invitee's zone."""
    tz_name = booking.timezone
    try:
        from zoneinfo import ZoneInfo
        local = booking.start_time.astimezone(ZoneInfo(tz_name))
    except Exception:  # noqa: BLE001 - unknown zone name or no tz database: show UTC
        tz_name, local = 'UTC', booking.start_time
    return (f'{_DAYS[local.weekday()]} {local.day} {_MONTHS[local.month - 1]} {local.year} '
            f'à {local:%H:%M} ({tz_name})')


def note_line(booking: Booking) -> str:
    """The line appended to the prospect's notes for this booking."""
    what = f'« {booking.event_name} »'
    if booking.kind == CREATED:
        where = f' — {booking.location}' if booking.location else ''
        verb = 'Rendez-vous reprogrammé' if booking.old_invitee else 'Rendez-vous'
        return f'[Calendly] {verb} {what} le {slot_text(booking)}{where}'
    if booking.rescheduled:
        return f'[Calendly] Rendez-vous {what} du {slot_text(booking)} déplacé vers un autre créneau'
    who = booking.canceled_by or {'host': "l'hôte", 'invitee': "l'invité"}.get(
        booking.canceler_type or '', 'Calendly')
    reason = f' : {booking.cancel_reason}' if booking.cancel_reason else ''
    return f'[Calendly] Rendez-vous {what} du {slot_text(booking)} annulé par {who}{reason}'


def notification_texts(booking: Booking, new_prospect: bool) -> Tuple[str, str, str]:
    """``(type, title, message)`` of the notification a creation raises."""
    slot = f'« {booking.event_name} » le {slot_text(booking)}'
    if new_prospect:
        return (TYPE_PROSPECT_CREATED, TITLE_PROSPECT_CREATED,
                f'{booking.name} a réservé {slot}.')
    if booking.old_invitee:
        return (TYPE_APPOINTMENT_BOOKED, TITLE_APPOINTMENT_BOOKED,
                f'{booking.name} a reprogrammé son rendez-vous : {slot}.')
    return (TYPE_APPOINTMENT_BOOKED, TITLE_APPOINTMENT_BOOKED,
            f'{booking.name} a pris un nouveau rendez-vous : {slot}.')


def notification_meta(booking: Booking, prospect_id: str) -> Dict[str, Any]:
    return {'prospect_id': prospect_id, 'invitee_uri': booking.invitee_uri,
            'event_uri': booking.event_uri, 'start_time': booking.start_time_text}
