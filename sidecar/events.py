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
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

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
    op: str                    # 'created' | 'updated' | 'deleted' ('created_many' / 'updated_many':
                               # nothing left of a compact or lean row)
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


#: The ops of journal rows that hold keys only (sql/install.sql): a compact row of
#: a multi-row INSERT, and the lean rows of single INSERTs and UPDATEs. The read
#: expands them into payloads; what it returns unexpanded had no row left.
LEAN_OPS = {'created_many': 'created', 'updated_many': 'updated'}


def _lean_key(data: Any) -> Optional[str]:
    """The key of a lean row holding exactly one (as text, as to_jsonb would print it), else None."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if not isinstance(data, dict):
        return None
    hexed = data.get('uuids')
    if isinstance(hexed, str):
        if len(hexed) != 32:
            return None
        h = hexed.lower()
        return f'{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}'
    keys = data.get('keys')
    if isinstance(keys, str) and len(keys) > 2 and keys[0] == '{' and keys[-1] == '}':
        inner = keys[1:-1]
        if inner[0] != '"':
            return None if ',' in inner else inner
        if len(inner) < 2 or inner[-1] != '"':
            return None
        out, i, body = [], 0, inner[1:-1]
        while i < len(body):
            c = body[i]
            if c == '\\' and i + 1 < len(body):
                out.append(body[i + 1])
                i += 2
                continue
            if c == '"':
                return None              # a second element
            out.append(c)
            i += 1
        return ''.join(out)
    ids = data.get('ids')
    if isinstance(ids, list) and len(ids) == 1:
        return _id(ids[0])
    return None


def fill_gone(rows: List[Any], kind_at: int, op_at: int, org_at: int, data_at: int, part_at: int) -> List[Any]:
    """Rows of one read (journal id order) with the lean rows whose row was gone when read
    built from the "last" payload of the deleted row that follows them in the same read.

    A lean row (one key, op 'created_many' / 'updated_many') gets its payload when it is
    read, from the row as it is then. If the row was deleted (or moved to another
    organization) meanwhile, the read returns it unexpanded; the ``deleted`` journal row
    written since carries the row's last published state, and is in the same read (it
    committed before the read's snapshot, after the lean row's transaction). So every
    event is still sent, once and in order. ``rows`` are tuples (or Changes) with the
    given column positions; the list is returned as it is when nothing is to be done."""
    pending = [i for i, r in enumerate(rows) if r[part_at] is None and r[op_at] in LEAN_OPS]
    if not pending:
        return rows
    gone: Dict[Tuple[str, Optional[str]], List[Tuple[int, Dict[str, Any]]]] = {}
    for i in range(pending[0] + 1, len(rows)):
        r = rows[i]
        if r[op_at] != 'deleted' or r[kind_at] != 'prospect':
            continue
        data = r[data_at]
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                continue
        last = data.get('last') if isinstance(data, dict) else None
        if isinstance(last, dict):
            gone.setdefault((r[org_at], _id(data.get('id'))), []).append((i, last))
    if not gone:
        return rows
    out = list(rows)
    for i in pending:
        r = rows[i]
        for j, last in gone.get((r[org_at], _lean_key(r[data_at])), ()):
            if j > i:
                values = list(r)
                values[op_at], values[data_at], values[part_at] = LEAN_OPS[r[op_at]], last, 1
                out[i] = type(r)._make(values) if hasattr(type(r), '_make') else tuple(values)
                break
    return out
