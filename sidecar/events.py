"""The pure core: what a journal change becomes on the wire.

Imports nothing from tornado, socketio or psycopg. This module is the one
source for event names, room names and payload fields (``sql/install.sql``
repeats the field lists for the triggers; a test keeps the two equal).

Events (see README, "Event catalogue"):

``prospect:created`` / ``prospect:updated``
    ``{id, firstname, lastname, email, phone, status, source, notes, created_at,
    updated_at}`` to the prospect's organization room. ``id`` is a string,
    timestamps are ISO-8601 with an offset.
``prospect:deleted``
    ``{id}`` to the organization room. A prospect moved to another
    organization is deleted for the old one and created for the new one.
``notification``
    ``{id, type, title, message, meta, created_at}`` (``meta`` always an
    object) to one user's room when the row names a user, else to the
    organization room.

Rooms: ``org:<organization id>`` and ``user:<organization id>:<user id>``. The
user room carries the organization too, so a notification addressed to a user
never reaches that user's sockets opened for another organization.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, NamedTuple, Optional

PROSPECT_CREATED = 'prospect:created'
PROSPECT_UPDATED = 'prospect:updated'
PROSPECT_DELETED = 'prospect:deleted'
NOTIFICATION = 'notification'
EVENT_NAMES = (PROSPECT_CREATED, PROSPECT_UPDATED, PROSPECT_DELETED, NOTIFICATION)

PROSPECT_FIELDS = ('id', 'firstname', 'lastname', 'email', 'phone', 'status',
                   'source', 'notes', 'created_at', 'updated_at')
NOTIFICATION_FIELDS = ('id', 'type', 'title', 'message', 'meta', 'created_at')
FIELDS_BY_KIND = {'prospect': PROSPECT_FIELDS, 'notification': NOTIFICATION_FIELDS}


def org_room(organization_id: Any) -> str:
    return f'org:{organization_id}'


def user_room(organization_id: Any, user_id: Any) -> str:
    return f'user:{organization_id}:{user_id}'


class Change(NamedTuple):
    """One journal row, as the listener reads it.

    ``data`` may still be the row's JSON text: it is decoded only for a change
    that is routed (somebody is in its room), see ``route``.
    """
    id: int
    kind: str                  # 'prospect' | 'notification'
    op: str                    # 'created' | 'updated' | 'deleted' ('created_many': nothing left of a compact row)
    organization_id: str
    user_id: Optional[str]
    data: Any                  # dict, or its JSON text
    recorded_at: float = 0.0   # unix time the writing transaction started
    #: for one of the rows a compact journal row (op 'created_many') stands for,
    #: its place in that row (1-based); None for a plain journal row
    part: Optional[int] = None


class Delivery(NamedTuple):
    """An event to emit to one room."""
    event: str
    payload: Dict[str, Any]
    room: str


def _id(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _meta(value: Any) -> Dict[str, Any]:
    # A host may keep meta as JSON text (or not at all); the contract wants an object.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {'value': value}
    if value is None:
        return {}
    return value if isinstance(value, dict) else {'value': value}


#: Prospect fields the contract types as strings; a host may map them to
#: numbers (Odoo's stage_id), which are sent as their text.
_TEXT_FIELDS = ('firstname', 'lastname', 'email', 'phone', 'status', 'source', 'notes')


def prospect_payload(data: Dict[str, Any]) -> Dict[str, Any]:
    payload = {f: data.get(f) for f in PROSPECT_FIELDS}
    payload['id'] = _id(payload['id'])
    for f in _TEXT_FIELDS:
        value = payload[f]
        if value is not None and not isinstance(value, str):
            payload[f] = str(value)
    return payload


def notification_payload(data: Dict[str, Any]) -> Dict[str, Any]:
    payload = {f: data.get(f) for f in NOTIFICATION_FIELDS}
    payload['id'] = _id(payload['id'])
    payload['meta'] = _meta(payload['meta'])
    return payload


def room_of(change: Change) -> Optional[str]:
    """The room a change is delivered to, or None when it causes no event (payload not built)."""
    if change.kind == 'prospect':
        return org_room(change.organization_id) if change.op in ('created', 'updated', 'deleted') else None
    if change.kind == 'notification' and change.op == 'created':
        return (user_room(change.organization_id, change.user_id) if change.user_id is not None
                else org_room(change.organization_id))
    return None


def route(change: Change) -> List[Delivery]:
    """Map one change to the deliveries it causes (possibly none)."""
    room = room_of(change)
    if room is None:
        return []
    data = change.data if isinstance(change.data, dict) else json.loads(change.data or '{}')
    if change.kind == 'prospect':
        if change.op == 'deleted':
            return [Delivery(PROSPECT_DELETED, {'id': _id(data.get('id'))}, room)]
        return [Delivery(f'prospect:{change.op}', prospect_payload(data), room)]
    return [Delivery(NOTIFICATION, notification_payload(data), room)]
