"""The pure booking core: what an invitee payload means for the CRM."""
import copy
from datetime import datetime, timezone

import pytest

from sidecar.calendly import booking as bk

# the doc's invitee.created sample, trimmed to what matters
EVENT = {
    'uri': 'https://api.calendly.com/scheduled_events/9f3c2b1a-6d4e-4a8b-b2c1-0e7f5a6d3c21',
    'name': '30 Minute Consultation', 'status': 'active',
    'start_time': '2026-03-05T17:00:00.000000Z', 'end_time': '2026-03-05T17:30:00.000000Z',
    'location': {'type': 'google_conference', 'status': 'pushed',
                 'join_url': 'https://calendly.com/events/9f3c2b1a/google_meet'},
}
INVITEE = {
    'uri': EVENT['uri'] + '/invitees/1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d',
    'email': 'dana.reyes@example.com', 'name': 'Dana Reyes', 'first_name': 'Dana', 'last_name': 'Reyes',
    'status': 'active', 'timezone': 'America/Los_Angeles', 'event': EVENT['uri'],
    'questions_and_answers': [{'question': 'Company', 'answer': 'Acme Dental', 'position': 0},
                              {'question': 'Phone number', 'answer': '+1 415-555-0134', 'position': 1}],
    'text_reminder_number': None, 'rescheduled': False, 'old_invitee': None, 'new_invitee': None,
}


def invitee(**changes):
    return dict(copy.deepcopy(INVITEE), **changes)


def event(**changes):
    return dict(copy.deepcopy(EVENT), **changes)


@pytest.mark.parametrize('changes, expected', [
    ({}, ('Dana', 'Reyes')),
    ({'first_name': None, 'last_name': None, 'name': 'Lee Wong'}, ('Lee', 'Wong')),
    ({'first_name': None, 'last_name': None, 'name': 'Jean de la Fontaine'}, ('Jean', 'de la Fontaine')),
    ({'first_name': None, 'last_name': None, 'name': 'Madonna'}, ('Madonna', '')),
    ({'first_name': None, 'last_name': None, 'name': '  Lee   Wong '}, ('Lee', 'Wong')),
    ({'first_name': 'Dana', 'last_name': None}, ('Dana', '')),
    ({'first_name': None, 'last_name': None, 'name': ''}, ('dana.reyes', '')),
])
def test_first_and_last_name(changes, expected):
    b = bk.from_invitee(bk.CREATED, invitee(**changes), EVENT)
    assert (b.firstname, b.lastname) == expected


@pytest.mark.parametrize('changes, phone', [
    ({}, '+1 415-555-0134'),                                           # from the phone question
    ({'text_reminder_number': '+1 212-555-0199'}, '+1 212-555-0199'),  # SMS reminder number wins
    ({'questions_and_answers': []}, None),
    ({'questions_and_answers': [{'question': 'Téléphone', 'answer': '06 12 34 56 78'}]}, '06 12 34 56 78'),
    ({'questions_and_answers': [{'question': 'Mobile', 'answer': 'ask my assistant'}]}, None),
    ({'questions_and_answers': [{'question': 'Hotel name', 'answer': '1234567 Palace'}]}, None),
])
def test_phone(changes, phone):
    assert bk.from_invitee(bk.CREATED, invitee(**changes), EVENT).phone == phone


@pytest.mark.parametrize('email', ['LEE.W@Example.org', ' lee.w@example.ORG ', 'lee.w@example.org'])
def test_email_is_normalised(email):
    assert bk.from_invitee(bk.CREATED, invitee(email=email), EVENT).email == 'lee.w@example.org'


@pytest.mark.parametrize('tz, expected', [
    ('America/Los_Angeles', 'jeudi 5 mars 2026 à 09:00 (America/Los_Angeles)'),
    ('Europe/Paris', 'jeudi 5 mars 2026 à 18:00 (Europe/Paris)'),
    ('Asia/Tokyo', 'vendredi 6 mars 2026 à 02:00 (Asia/Tokyo)'),
    ('Not/AZone', 'jeudi 5 mars 2026 à 17:00 (UTC)'),
    (None, 'jeudi 5 mars 2026 à 17:00 (UTC)'),
])
def test_slot_is_shown_in_the_invitees_timezone(tz, expected):
    assert bk.slot_text(bk.from_invitee(bk.CREATED, invitee(timezone=tz), EVENT)) == expected


@pytest.mark.parametrize('location, text', [
    ({'type': 'google_conference', 'join_url': 'https://meet/x'}, 'Google Meet : https://meet/x'),
    ({'type': 'zoom', 'join_url': 'https://zoom/x'}, 'Zoom : https://zoom/x'),
    ({'type': 'physical', 'location': '12 Market St, Suite 4'}, '12 Market St, Suite 4'),
    ({'type': 'outbound_call', 'location': '+1 212-555-0199'}, 'Téléphone : +1 212-555-0199'),
    ({'type': 'custom', 'location': 'Au café'}, 'Au café'),
    ({'type': 'google_conference', 'status': 'failed'}, 'Google Meet'),
    ({'type': 'ask_invitee'}, None),
    (None, None),
])
def test_location(location, text):
    assert bk.location_text(location) == text


@pytest.mark.parametrize('kind, changes, line', [
    (bk.CREATED, {}, '[Calendly] Rendez-vous « 30 Minute Consultation » le jeudi 5 mars 2026 à 09:00 '
                     '(America/Los_Angeles) — Google Meet : https://calendly.com/events/9f3c2b1a/google_meet'),
    (bk.CREATED, {'old_invitee': 'https://x/invitees/old'},
     '[Calendly] Rendez-vous reprogrammé « 30 Minute Consultation » le jeudi 5 mars 2026 à 09:00 '
     '(America/Los_Angeles) — Google Meet : https://calendly.com/events/9f3c2b1a/google_meet'),
    (bk.CANCELED, {'status': 'canceled', 'cancellation': {
        'canceled_by': 'Dana Reyes', 'reason': 'Schedule conflict', 'canceler_type': 'invitee'}},
     '[Calendly] Rendez-vous « 30 Minute Consultation » du jeudi 5 mars 2026 à 09:00 (America/Los_Angeles) '
     'annulé par Dana Reyes : Schedule conflict'),
    (bk.CANCELED, {'status': 'canceled', 'cancellation': {'canceler_type': 'host'}},
     "[Calendly] Rendez-vous « 30 Minute Consultation » du jeudi 5 mars 2026 à 09:00 (America/Los_Angeles) "
     "annulé par l'hôte"),
    (bk.CANCELED, {'status': 'canceled', 'rescheduled': True, 'new_invitee': 'https://x/invitees/new'},
     '[Calendly] Rendez-vous « 30 Minute Consultation » du jeudi 5 mars 2026 à 09:00 (America/Los_Angeles) '
     'déplacé vers un autre créneau'),
])
def test_note_lines(kind, changes, line):
    assert bk.note_line(bk.from_invitee(kind, invitee(**changes), EVENT)) == line


def test_notification_texts_for_a_new_prospect_and_a_returning_one():
    b = bk.from_invitee(bk.CREATED, invitee(), EVENT)
    assert bk.notification_texts(b, new_prospect=True) == (
        'calendly_prospect_created', 'Nouveau prospect Calendly',
        'Dana Reyes a réservé « 30 Minute Consultation » le jeudi 5 mars 2026 à 09:00 (America/Los_Angeles).')
    ntype, title, message = bk.notification_texts(b, new_prospect=False)
    assert (ntype, title) == ('calendly_appointment_booked', 'Nouveau rendez-vous Calendly')
    assert message.startswith('Dana Reyes a pris un nouveau rendez-vous : « 30 Minute Consultation »')
    assert bk.notification_meta(b, 'p1') == {
        'prospect_id': 'p1', 'invitee_uri': INVITEE['uri'], 'event_uri': EVENT['uri'],
        'start_time': '2026-03-05T17:00:00.000000Z'}


def test_a_polled_invitee_stands_for_the_webhooks_it_would_have_sent():
    active = bk.from_poll(invitee(), EVENT)
    canceled = bk.from_poll(invitee(status='canceled'), EVENT)
    assert [b.kind for b in active] == [bk.CREATED]
    assert [b.kind for b in canceled] == [bk.CREATED, bk.CANCELED]
    assert canceled[1].as_created() == canceled[0]
    assert active[0].start_time == datetime(2026, 3, 5, 17, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize('envelope, result', [
    ({'event': 'invitee.created', 'payload': {'uri': 'u'}}, ('invitee.created', {'uri': 'u'})),
    ({'event': 'invitee.canceled', 'payload': {}}, ('invitee.canceled', {})),
    ({'event': 'routing_form_submission.created', 'payload': {}}, None),
    ({'event': 'invitee_no_show.created', 'payload': {}}, None),
    ({'payload': {}}, None),
])
def test_webhook_kinds(envelope, result):
    assert bk.split_webhook(envelope) == result


@pytest.mark.parametrize('envelope, message', [
    ([], 'not a JSON object'),
    ('x', 'not a JSON object'),
    ({'event': 'invitee.created'}, 'payload is missing'),
    ({'event': 'invitee.created', 'payload': []}, 'payload is missing'),
])
def test_bad_envelopes(envelope, message):
    with pytest.raises(bk.BookingError, match=message):
        bk.split_webhook(envelope)


@pytest.mark.parametrize('inv, ev, message', [
    (invitee(email=None), EVENT, 'payload.email is missing'),
    (invitee(email='not-an-email'), EVENT, 'not an email address'),
    (invitee(uri=''), EVENT, 'payload.uri is missing'),
    (invitee(), None, 'scheduled_event is missing'),
    (invitee(), event(start_time=None), 'scheduled_event.start_time is missing'),
    (invitee(), event(start_time='next tuesday'), 'not an ISO-8601 time'),
    (invitee(event=None), event(uri=None), 'payload.event is missing'),
])
def test_payloads_missing_what_a_booking_needs(inv, ev, message):
    with pytest.raises(bk.BookingError, match=message):
        bk.from_invitee(bk.CREATED, inv, ev)
