"""Calendly webhooks end to end: fake Calendly -> sidecar -> PostgreSQL triggers -> Socket.IO clients."""
import json
import logging
import time
import urllib.parse

import psycopg
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from conftest import make_token
from fake_calendly import SIGNING_KEY, calendly_env, component_of, connect, sign

pytestmark = pytest.mark.usefixtures('io_loop')

TOKEN = 'calendly-token-org-one-admin'
SLOT = 'jeudi 5 mars 2026 à 09:00 (America/Los_Angeles)'


async def start(database, make_sidecar, fake, **env):
    sc = await make_sidecar(database, **calendly_env(fake, **env))
    fake.add_user(TOKEN)
    connection = await connect(sc, fake, TOKEN, organization_id='1')
    return sc, connection


def rows(database, sql, params=None):
    return database.execute(sql, params)


def crm_is_untouched(database):
    return (rows(database, 'SELECT count(*) FROM prospects')[0][0] == 0
            and rows(database, 'SELECT count(*) FROM notifications')[0][0] == 0
            and rows(database, 'SELECT count(*) FROM crm_realtime.calendly_booking')[0][0] == 0)


async def post(url, body: bytes, headers=None):
    return await AsyncHTTPClient().fetch(HTTPRequest(url, method='POST', body=body, headers=headers or {}),
                                         raise_error=False)


@pytest.mark.gen_test(timeout=60)
async def test_booking_creates_prospect_and_notification_seen_live_by_that_organization_only(
        database, fake_calendly, make_sidecar, clients):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    one = await clients(sc.url, make_token(1, 11))
    two = await clients(sc.url, make_token(2, 21))
    invitee = fake_calendly.book(TOKEN, email='Dana.Reyes@Example.com', name='Dana Reyes', first_name='Dana',
                                 last_name='Reyes', questions=[('Phone number', '+1 415-555-0134')])

    (response,) = await fake_calendly.deliver('invitee.created', invitee)
    assert response.code == 200 and json.loads(response.body) == {'status': 'prospect_created'}

    await one.wait_for(lambda r: r.named('prospect:created') and r.named('notification'))
    prospect = one.named('prospect:created')[0]
    assert {k: prospect[k] for k in ('firstname', 'lastname', 'email', 'phone', 'status', 'source')} == {
        'firstname': 'Dana', 'lastname': 'Reyes', 'email': 'dana.reyes@example.com',
        'phone': '+1 415-555-0134', 'status': 'new', 'source': 'calendly'}
    assert prospect['notes'] == (f'[Calendly] Rendez-vous « 30 Minute Consultation » le {SLOT} — Google Meet : '
                                 f'{fake_calendly.event_of(invitee)["location"]["join_url"]}')
    notification = one.named('notification')[0]
    assert notification['type'] == 'calendly_prospect_created'
    assert notification['title'] == 'Nouveau prospect Calendly'
    assert notification['message'] == f'Dana Reyes a réservé « 30 Minute Consultation » le {SLOT}.'
    assert notification['meta'] == {'prospect_id': prospect['id'], 'invitee_uri': invitee['uri'],
                                    'event_uri': invitee['event'], 'start_time': '2026-03-05T17:00:00.000000Z'}

    # organization two's socket is live (it gets its own marker) and got nothing else
    database.insert_prospect(2, firstname='Marker')
    await two.wait_events(1)
    assert [(e[0], e[1].get('firstname')) for e in two.events] == [('prospect:created', 'Marker')]


@pytest.mark.gen_test(timeout=60)
async def test_prospect_status_comes_from_the_setting(database, fake_calendly, make_sidecar):
    await start(database, make_sidecar, fake_calendly, SIDECAR_CALENDLY_PROSPECT_STATUS='rdv_pris')
    invitee = fake_calendly.book(TOKEN, email='lee@example.org', name='Lee Wong')
    (response,) = await fake_calendly.deliver('invitee.created', invitee)
    assert response.code == 200
    assert rows(database, 'SELECT firstname, lastname, status FROM prospects') == [('Lee', 'Wong', 'rdv_pris')]


def _bad(kind):
    """(header, body) for one way of getting the signature wrong, built from a good body."""
    def build(body: bytes):
        now = int(time.time())
        return {
            'missing': (None, body),
            'malformed': ('t=now,v1=nothex', body),
            'no v1': (f't={now}', body),
            'wrong key': (sign('not-the-signing-key-' + 'x' * 20, now, body), body),
            'stale': (sign(SIGNING_KEY, now - 181, body), body),
            # a margin: the server reads its clock a moment after ``now`` was taken
            # (the exact 180 s boundary is tested in test_calendly_signature.py)
            'from the future': (sign(SIGNING_KEY, now + 200, body), body),
            're-serialised body': (sign(SIGNING_KEY, now, body),
                                   json.dumps(json.loads(body), separators=(',', ':')).encode()),
            'tampered body': (sign(SIGNING_KEY, now, body), body.replace(b'Dana', b'Mallory')),
        }[kind]
    return build


@pytest.mark.parametrize('kind, log_reason', [
    ('missing', 'no Calendly-Webhook-Signature'), ('malformed', 'bad or repeated t'), ('no v1', 'no v1'),
    ('wrong key', 'does not match'), ('stale', 'stale'), ('from the future', 'future'),
    ('re-serialised body', 'does not match'), ('tampered body', 'does not match'),
])
@pytest.mark.gen_test(timeout=60)
async def test_bad_signature_is_401_and_changes_nothing(database, fake_calendly, make_sidecar, caplog,
                                                        kind, log_reason):
    sc, connection = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    good = fake_calendly.encode(fake_calendly.envelope('invitee.created', invitee))
    header, body = _bad(kind)(good)
    caplog.set_level(logging.INFO, logger='crm_realtime.calendly')

    response = await post(f'{sc.url}/webhooks/calendly/{connection.id}', body,
                          {} if header is None else {'Calendly-Webhook-Signature': header})

    assert response.code == 401
    assert json.loads(response.body) == {'error': 'invalid signature'}
    assert crm_is_untouched(database)
    assert log_reason in caplog.text and SIGNING_KEY not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_connection_without_signing_key_refuses_every_webhook(database, fake_calendly, make_sidecar):
    sc = await make_sidecar(database, **calendly_env(fake_calendly))
    fake_calendly.add_user(TOKEN)
    connection = await connect(sc, fake_calendly, TOKEN, signing_key=None)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    body = fake_calendly.encode(fake_calendly.envelope('invitee.created', invitee))
    response = await fake_calendly.post_signed(f'{sc.url}/webhooks/calendly/{connection.id}', body, SIGNING_KEY)
    assert response.code == 401 and crm_is_untouched(database)


@pytest.mark.parametrize('body, status, error', [
    (b'{"event": "invitee.created", "payload": ', 400, 'body is not JSON'),
    (b'\xff\xfe not even text', 400, 'body is not JSON'),
    (b'[1, 2, 3]', 400, 'the body is not a JSON object'),
    (b'{"event": "invitee.created", "payload": {"uri": "https://x/scheduled_events/e/invitees/i"}}', 400,
     'payload.email is missing'),
    (b'{"event": "routing_form_submission.created", "payload": {}}', 200, None),
    (b'{"event": "invitee_no_show.created", "payload": {"uri": "x"}}', 200, None),
])
@pytest.mark.gen_test(timeout=60)
async def test_signed_but_unusable_bodies(database, fake_calendly, make_sidecar, body, status, error):
    sc, connection = await start(database, make_sidecar, fake_calendly)
    response = await fake_calendly.post_signed(f'{sc.url}/webhooks/calendly/{connection.id}', body, SIGNING_KEY)
    assert response.code == status
    assert json.loads(response.body) == ({'error': error} if error else {'status': 'ignored'})
    assert crm_is_untouched(database)


@pytest.mark.gen_test(timeout=60)
async def test_oversized_body_is_413_before_it_is_read(database, fake_calendly, make_sidecar):
    sc, connection = await start(database, make_sidecar, fake_calendly, SIDECAR_CALENDLY_WEBHOOK_MAX_BYTES='2048')
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes' + ' ' * 3000)
    body = fake_calendly.encode(fake_calendly.envelope('invitee.created', invitee))
    assert len(body) > 2048
    response = await fake_calendly.post_signed(f'{sc.url}/webhooks/calendly/{connection.id}', body, SIGNING_KEY)
    assert response.code == 413 and json.loads(response.body) == {'error': 'body too large'}
    assert crm_is_untouched(database)


@pytest.mark.gen_test(timeout=60)
async def test_oversized_chunked_body_is_413_as_soon_as_it_passes_the_cap(database, fake_calendly,
                                                                         make_sidecar):
    import asyncio
    sc, connection = await start(database, make_sidecar, fake_calendly, SIDECAR_CALENDLY_WEBHOOK_MAX_BYTES='2048')
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes' + ' ' * 3000)
    body = fake_calendly.encode(fake_calendly.envelope('invitee.created', invitee))
    reader, writer = await asyncio.open_connection('127.0.0.1', sc.port)
    writer.write((f'POST /webhooks/calendly/{connection.id} HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                  f'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n'
                  f'Calendly-Webhook-Signature: {sign(SIGNING_KEY, int(time.time()), body)}\r\n\r\n').encode())
    # 1 KiB chunks; the answer must come once the cap is passed, before the body ends
    sent = 0
    for start_at in range(0, 3072, 1024):
        piece = body[start_at:start_at + 1024]
        writer.write(b'%x\r\n%s\r\n' % (len(piece), piece))
        sent += len(piece)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 10)
    status_line = head.split(b'\r\n', 1)[0]
    assert status_line.startswith(b'HTTP/1.1 413'), head
    length = int([h.split(b':', 1)[1] for h in head.split(b'\r\n') if h.lower().startswith(b'content-length')][0])
    assert json.loads(await reader.readexactly(length)) == {'error': 'body too large'}
    assert sent < len(body)  # the terminating chunk was never sent
    writer.close()
    assert crm_is_untouched(database)


@pytest.mark.gen_test(timeout=60)
async def test_unknown_connection_is_404(database, fake_calendly, make_sidecar):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    response = await fake_calendly.post_signed(
        f'{sc.url}/webhooks/calendly/00000000-0000-4000-8000-000000000000', b'{}', SIGNING_KEY)
    assert response.code == 404 and crm_is_untouched(database)


@pytest.mark.gen_test(timeout=60)
async def test_duplicate_delivery_changes_the_crm_once(database, fake_calendly, make_sidecar, clients):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    c = await clients(sc.url, make_token(1, 11))
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')

    answers = []
    for _ in range(3):
        (response,) = await fake_calendly.deliver('invitee.created', invitee)
        answers.append((response.code, json.loads(response.body)['status']))

    assert answers == [(200, 'prospect_created'), (200, 'duplicate'), (200, 'duplicate')]
    database.insert_prospect(1, firstname='Marker')
    await c.wait_for(lambda r: any(p['firstname'] == 'Marker' for p in r.named('prospect:created')))
    assert [e[0] for e in c.events] == ['prospect:created', 'notification', 'prospect:created']
    assert rows(database, "SELECT count(*) FROM prospects WHERE source = 'calendly'") == [(1,)]
    assert rows(database, 'SELECT count(*) FROM notifications') == [(1,)]


@pytest.mark.gen_test(timeout=60)
async def test_existing_prospect_gets_the_appointment_appended_and_keeps_its_source(
        database, fake_calendly, make_sidecar, clients):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    c = await clients(sc.url, make_token(1, 11))
    pid = database.insert_prospect(1, firstname='Lee', lastname='Wong', email='lee.w@example.org',
                                   source='website', notes='first contact')
    await c.wait_events(1)
    # a single-name event type, and the invitee typed the email in another case
    invitee = fake_calendly.book(TOKEN, email='LEE.W@Example.org', name='Lee Wong', timezone_name='Europe/Paris',
                                 location={'type': 'physical', 'location': '12 Market St, Suite 4'})

    (response,) = await fake_calendly.deliver('invitee.created', invitee)

    assert json.loads(response.body) == {'status': 'appointment_added'}
    await c.wait_for(lambda r: r.named('prospect:updated') and r.named('notification'))
    updated = c.named('prospect:updated')[0]
    assert updated['id'] == pid and updated['source'] == 'website' and updated['firstname'] == 'Lee'
    assert updated['notes'] == ('first contact\n[Calendly] Rendez-vous « 30 Minute Consultation » le '
                                'jeudi 5 mars 2026 à 18:00 (Europe/Paris) — 12 Market St, Suite 4')
    assert updated['updated_at'] > c.named('prospect:created')[0]['updated_at']
    notification = c.named('notification')[0]
    assert notification['type'] == 'calendly_appointment_booked'
    assert notification['message'].startswith('Lee Wong a pris un nouveau rendez-vous')
    assert notification['meta']['prospect_id'] == pid
    assert rows(database, 'SELECT count(*) FROM prospects') == [(1,)]
    assert rows(database, 'SELECT prospect_id, outcome FROM crm_realtime.calendly_booking') == [
        (pid, 'appointment_added')]


@pytest.mark.gen_test(timeout=60)
async def test_cancellation_appends_a_line(database, fake_calendly, make_sidecar):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    await fake_calendly.deliver('invitee.created', invitee)
    fake_calendly.cancel(invitee['uri'], reason='Schedule conflict')
    (response,) = await fake_calendly.deliver('invitee.canceled', invitee)
    assert json.loads(response.body) == {'status': 'cancellation_noted'}
    (notes,) = rows(database, 'SELECT notes FROM prospects')[0]
    assert notes.splitlines()[1] == (f'[Calendly] Rendez-vous « 30 Minute Consultation » du {SLOT} '
                                     'annulé par Dana Reyes : Schedule conflict')
    assert rows(database, 'SELECT count(*) FROM notifications') == [(1,)]


@pytest.mark.gen_test(timeout=60)
async def test_cancellation_whose_booking_was_never_delivered_records_both(database, fake_calendly,
                                                                           make_sidecar):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    fake_calendly.cancel(invitee['uri'])
    (response,) = await fake_calendly.deliver('invitee.canceled', invitee)
    assert json.loads(response.body) == {'status': 'cancellation_noted'}
    (notes,) = rows(database, 'SELECT notes FROM prospects')[0]
    assert [line.split(' « ')[0] for line in notes.splitlines()] == ['[Calendly] Rendez-vous'] * 2
    assert 'annulé' in notes.splitlines()[1]
    # and when the booking's own webhook finally arrives, it is a duplicate
    (late,) = await fake_calendly.deliver('invitee.created', invitee)
    assert json.loads(late.body) == {'status': 'duplicate'}


@pytest.mark.parametrize('order', ['canceled first', 'created first'])
@pytest.mark.gen_test(timeout=60)
async def test_reschedule_reads_correctly_in_either_order(database, fake_calendly, make_sidecar, order):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    first = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    await fake_calendly.deliver('invitee.created', first)
    old, new = fake_calendly.reschedule(TOKEN, first['uri'], '2026-03-06T18:30:00.000000Z')
    deliveries = [('invitee.canceled', old), ('invitee.created', new)]
    if order == 'created first':
        deliveries.reverse()
    for kind, invitee in deliveries:
        (response,) = await fake_calendly.deliver(kind, invitee)
        assert response.code == 200

    (notes,) = rows(database, 'SELECT notes FROM prospects')[0]
    lines = notes.splitlines()
    assert lines[0] == (f'[Calendly] Rendez-vous « 30 Minute Consultation » le {SLOT} — Google Meet : '
                        f'{fake_calendly.event_of(first)["location"]["join_url"]}')
    moved = f'[Calendly] Rendez-vous « 30 Minute Consultation » du {SLOT} déplacé vers un autre créneau'
    rebooked = ('[Calendly] Rendez-vous reprogrammé « 30 Minute Consultation » le vendredi 6 mars 2026 à 10:30 '
                f'(America/Los_Angeles) — Google Meet : {fake_calendly.event_of(new)["location"]["join_url"]}')
    assert lines[1:] == ([moved, rebooked] if order == 'canceled first' else [rebooked, moved])
    assert rows(database, 'SELECT type, message FROM notifications ORDER BY created_at, type DESC') == [
        ('calendly_prospect_created', f'Dana Reyes a réservé « 30 Minute Consultation » le {SLOT}.'),
        ('calendly_appointment_booked', 'Dana Reyes a reprogrammé son rendez-vous : « 30 Minute Consultation » '
                                        'le vendredi 6 mars 2026 à 10:30 (America/Los_Angeles).')]


@pytest.mark.gen_test(timeout=60)
async def test_payload_without_scheduled_event_fetches_it(database, fake_calendly, make_sidecar):
    sc, connection = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    envelope = fake_calendly.envelope('invitee.created', invitee)
    del envelope['payload']['scheduled_event']
    response = await fake_calendly.post_signed(f'{sc.url}/webhooks/calendly/{connection.id}',
                                               fake_calendly.encode(envelope), SIGNING_KEY)
    assert json.loads(response.body) == {'status': 'prospect_created'}
    event_path = urllib.parse.urlparse(invitee['event']).path
    assert fake_calendly.count('GET', event_path) == 1


@pytest.mark.gen_test(timeout=60)
async def test_failed_write_is_503_rolled_back_whole_and_the_redelivery_applies_it(
        database, fake_calendly, make_sidecar, caplog):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    # the CRM refuses the row (after the idempotency row was claimed): all of it must roll back
    database.execute("ALTER TABLE prospects ADD CONSTRAINT not_now CHECK (source <> 'calendly')")
    (response,) = await fake_calendly.deliver('invitee.created', invitee)
    assert response.code == 503 and response.headers['Retry-After'] == '60'
    assert json.loads(response.body) == {'error': 'temporarily unavailable'}
    assert 'not_now' in caplog.text and 'dana@example.com' not in caplog.text
    assert crm_is_untouched(database)

    database.execute('ALTER TABLE prospects DROP CONSTRAINT not_now')
    (retry,) = await fake_calendly.deliver('invitee.created', invitee)
    assert json.loads(retry.body) == {'status': 'prospect_created'}


@pytest.mark.gen_test(timeout=60)
async def test_metrics_count_bookings_by_path_and_outcome(database, fake_calendly, make_sidecar):
    sc, _ = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    await fake_calendly.deliver('invitee.created', invitee)
    await fake_calendly.deliver('invitee.created', invitee)
    metrics = (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body.decode()
    assert 'crm_realtime_calendly_bookings_total{outcome="prospect_created",via="webhook"} 1.0' in metrics
    assert 'crm_realtime_calendly_bookings_total{outcome="duplicate",via="webhook"}' not in metrics
    assert component_of(sc).store.token  # the component is the one serving


# (path in the envelope, wrongly typed value, the reason the 400 gives)
WRONG_TYPES = [
    (('payload', 'name'), {'first': 'Dana'}, 'payload.name is not a string'),
    (('payload', 'email'), ['dana@example.com'], 'payload.email is not a string'),
    (('payload', 'first_name'), 7, 'payload.first_name is not a string'),
    (('payload', 'timezone'), ['Europe/Paris'], 'payload.timezone is not a string'),
    (('payload', 'uri'), {'id': 1}, 'payload.uri is not a string'),
    (('payload', 'questions_and_answers'), 12, 'payload.questions_and_answers is not a list'),
    (('payload', 'rescheduled'), 'yes', 'payload.rescheduled is not a boolean'),
    (('payload', 'old_invitee'), {'uri': 'x'}, 'payload.old_invitee is not a string'),
    (('payload', 'cancellation'), 'by host', 'payload.cancellation is not an object'),
    (('payload', 'scheduled_event', 'name'), {'fr': 'RDV'}, 'scheduled_event.name is not a string'),
    (('payload', 'scheduled_event', 'start_time'), 1772730000, 'scheduled_event.start_time is not a string'),
    (('payload', 'scheduled_event', 'location'), {'type': ['zoom']}, None),   # unreadable: just no label
]


@pytest.mark.gen_test(timeout=60)
async def test_signed_json_that_is_not_a_booking_is_400_naming_the_field(database, fake_calendly, make_sidecar):
    """Issue 8 item 8: a wrongly typed field was a 503 (an AttributeError inside) that Calendly retries for 24 h."""
    sc, connection = await start(database, make_sidecar, fake_calendly)
    url = f'{sc.url}/webhooks/calendly/{connection.id}'
    answers = []
    for path, value, reason in WRONG_TYPES:
        invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
        envelope = fake_calendly.envelope('invitee.created', invitee)
        node = envelope
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        response = await fake_calendly.post_signed(url, fake_calendly.encode(envelope), SIGNING_KEY)
        answers.append((path[-1], response.code, json.loads(response.body),
                        'Retry-After' in response.headers))
    expected = [(path[-1], 400, {'error': reason}, False) for path, _, reason in WRONG_TYPES if reason]
    assert [a for a in answers if a[0] != 'location'] == expected
    # a location whose type is unreadable still books (the label is left out)
    assert [a[1:3] for a in answers if a[0] == 'location'] == [(200, {'status': 'prospect_created'})]
    assert rows(database, 'SELECT count(*) FROM prospects')[0][0] == 1


@pytest.mark.gen_test(timeout=60)
async def test_deeply_nested_signed_body_is_400_not_500(database, fake_calendly, make_sidecar, caplog):
    """Issue 8 item 8: 100,000 nested arrays were a 500 (RecursionError in json.loads)."""
    sc, connection = await start(database, make_sidecar, fake_calendly)
    url = f'{sc.url}/webhooks/calendly/{connection.id}'
    caplog.set_level(logging.INFO, logger='crm_realtime.calendly')
    deep = b'{"event": "invitee.created", "payload": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
    response = await fake_calendly.post_signed(url, deep, SIGNING_KEY)
    assert response.code == 400 and json.loads(response.body) == {'error': 'body nests deeper than 32 levels'}
    # 32 levels pass the bound (and then are simply not a booking)
    ok_depth = b'{"event": "invitee.created", "payload": ' + b'[' * 31 + b']' * 31 + b'}'
    response = await fake_calendly.post_signed(url, ok_depth, SIGNING_KEY)
    assert response.code == 400 and json.loads(response.body) == {'error': 'payload is missing or not an object'}
    # brackets inside strings are text, not nesting
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana ' + '[' * 200 + ' Reyes')
    (response,) = await fake_calendly.deliver('invitee.created', invitee)
    assert response.code == 200 and json.loads(response.body) == {'status': 'prospect_created'}
    assert 'Traceback' not in caplog.text and 'RecursionError' not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_database_down_is_503_with_retry_after(database, fake_calendly, make_sidecar):
    """503 stays for what a retry can fix: here the database refusing every new session."""
    sc, connection = await start(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    with psycopg.connect(database.admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                          (database.name,))
            started = time.monotonic()
            (response,) = await fake_calendly.deliver('invitee.created', invitee)
            assert response.code == 503 and response.headers['Retry-After'] == '60'
            assert json.loads(response.body) == {'error': 'temporarily unavailable'}
            assert time.monotonic() - started < 10       # within Calendly's 15 s read timeout
        finally:
            admin.execute(f'ALTER DATABASE "{database.name}" ALLOW_CONNECTIONS true')
    # Calendly's redelivery, once the database is back (a pooled session that died
    # with the others may cost one more 503 first: the pool drops it then)
    for _ in range(5):
        (retry,) = await fake_calendly.deliver('invitee.created', invitee)
        if retry.code != 503:
            break
    assert json.loads(retry.body) == {'status': 'prospect_created'}
