"""The pure mapping from a journal change to (event, payload, room): a table."""
import pytest

from sidecar.events import (NOTIFICATION_FIELDS, PROSPECT_FIELDS, Change, Delivery, route)

P = {'id': 'a1', 'firstname': 'Ada', 'lastname': 'L', 'email': 'e', 'phone': 'p', 'status': 's',
     'source': 'calendly', 'notes': 'n', 'created_at': '2026-01-01T00:00:00+00:00',
     'updated_at': '2026-01-02T00:00:00+00:00'}
N = {'id': 5, 'type': 't', 'title': 'T', 'message': 'M', 'meta': {'k': 1},
     'created_at': '2026-01-01T00:00:00+00:00'}

CASES = [
    ('prospect created', Change(1, 'prospect', 'created', '1', None, P),
     [Delivery('prospect:created', P, 'org:1')]),
    ('prospect updated', Change(1, 'prospect', 'updated', '1', None, P),
     [Delivery('prospect:updated', P, 'org:1')]),
    ('prospect deleted carries only the id', Change(1, 'prospect', 'deleted', '1', None, {'id': 'a1'}),
     [Delivery('prospect:deleted', {'id': 'a1'}, 'org:1')]),
    ('integer ids become strings', Change(1, 'prospect', 'deleted', '1', None, {'id': 42}),
     [Delivery('prospect:deleted', {'id': '42'}, 'org:1')]),
    ('extra journal keys never reach the payload',
     Change(1, 'prospect', 'created', '3', None, {**P, 'dress_reservations': [1]}),
     [Delivery('prospect:created', P, 'org:3')]),
    ('missing fields are null', Change(1, 'prospect', 'created', '3', None, {'id': 'x'}),
     [Delivery('prospect:created', {**{f: None for f in PROSPECT_FIELDS}, 'id': 'x'}, 'org:3')]),
    ('numbers in text fields are sent as text (a host mapped status to stage_id)',
     Change(1, 'prospect', 'updated', '1', None, {**P, 'status': 4, 'source': 2}),
     [Delivery('prospect:updated', {**P, 'status': '4', 'source': '2'}, 'org:1')]),
    ('notification to the organization', Change(1, 'notification', 'created', '1', None, N),
     [Delivery('notification', {**N, 'id': '5'}, 'org:1')]),
    ('notification to one user of the organization', Change(1, 'notification', 'created', '1', '9', N),
     [Delivery('notification', {**N, 'id': '5'}, 'user:1:9')]),
    ('meta as JSON text becomes an object',
     Change(1, 'notification', 'created', '1', None, {**N, 'meta': '{"a": 2}'}),
     [Delivery('notification', {**N, 'id': '5', 'meta': {'a': 2}}, 'org:1')]),
    ('meta null becomes {}', Change(1, 'notification', 'created', '1', None, {**N, 'meta': None}),
     [Delivery('notification', {**N, 'id': '5', 'meta': {}}, 'org:1')]),
    ('notification updates have no event', Change(1, 'notification', 'updated', '1', None, N), []),
    ('unknown kinds are ignored', Change(1, 'invoice', 'created', '1', None, N), []),
]


@pytest.mark.parametrize('change,expected', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_route(change, expected):
    assert route(change) == expected


def test_payload_keys_are_exactly_the_contract():
    (d,) = route(Change(1, 'prospect', 'created', '1', None, P))
    assert tuple(d.payload) == PROSPECT_FIELDS
    (d,) = route(Change(1, 'notification', 'created', '1', None, N))
    assert tuple(d.payload) == NOTIFICATION_FIELDS
