"""The poller: what webhooks miss is caught by listing Calendly, and both paths agree."""
import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from tornado.httpclient import AsyncHTTPClient

from conftest import make_token
from fake_calendly import calendly_env, component_of, connect, ts
from sidecar.calendly.client import RetryPolicy

pytestmark = pytest.mark.usefixtures('io_loop')

TOKEN = 'calendly-token-org-one-admin'
#: short waits so failure paths stay fast; real defaults are in client.RetryPolicy
FAST = RetryPolicy(attempts=4, backoff_base=0.05, backoff_max=0.2, request_timeout=1, connect_timeout=1)
EVENTS = r'/scheduled_events'
INVITEES = r'/scheduled_events/[^/]+/invitees'


def soon(days=2, hours=0):
    """A slot in the future: the poll window starts a lookback before now."""
    base = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return ts(base + timedelta(days=days, hours=hours))


async def start(database, make_sidecar, fake, **env):
    sc = await make_sidecar(database, **calendly_env(fake, **env))
    fake.add_user(TOKEN)
    connection = await connect(sc, fake, TOKEN)
    component = component_of(sc)
    component.retry_policy = FAST
    component.poller.page_size = 2
    return sc, component, connection


def prospects(database):
    return database.execute('SELECT lower(email), firstname, lastname, phone, source, notes FROM prospects '
                            'ORDER BY email')


@pytest.mark.gen_test(timeout=60)
async def test_poll_reads_every_page_of_events_and_invitees(database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    existing = database.insert_prospect(1, firstname='Lee', lastname='Wong', email='lee.w@example.org',
                                        source='website', notes='met at the fair')
    fake = fake_calendly
    for day, email in enumerate(['a@example.com', 'b@example.com', 'c@example.com']):
        fake.book(TOKEN, email=email, name=f'Person {email[0].upper()}', start=soon(days=day + 1))
    # a group event with five invitees (three pages of two), one of them single-name and mixed-case
    group = fake.book(TOKEN, email='g1@example.com', name='Gil One', start=soon(days=5), limit=10,
                      event_name='Atelier de groupe')
    for n in range(2, 5):
        fake.book(TOKEN, email=f'g{n}@example.com', name=f'Gil {n}', event=group['event'])
    fake.book(TOKEN, email='LEE.W@Example.org', name='Lee Wong', event=group['event'],
              text_reminder_number='+1 212-555-0199')
    # and one that is over: it starts before the window
    fake.book(TOKEN, email='old@example.com', name='Old Timer', start=soon(days=-3))

    result = await component.poller.poll_connection(connection.id)

    assert result.error is None and not result.locked_out
    assert (result.events, result.events_fetched, result.applied) == (4, 4, 8)
    event_pages = [q for m, p, q in fake.requests if p == '/scheduled_events']
    assert len(event_pages) == 2 and 'page_token' in event_pages[1]
    assert all(q['count'] == '2' and q['organization'] == connection.subject and 'status' not in q
               for q in event_pages)
    assert fake.count('GET', '/scheduled_events/' + group['event'].rsplit('/', 1)[1] + '/invitees') == 3
    emails = [r[0] for r in prospects(database)]
    assert emails == ['a@example.com', 'b@example.com', 'c@example.com', 'g1@example.com', 'g2@example.com',
                      'g3@example.com', 'g4@example.com', 'lee.w@example.org']
    (lee,) = database.execute('SELECT id, source, notes FROM prospects WHERE email = %s', ['lee.w@example.org'])
    assert str(lee[0]) == existing and lee[1] == 'website'
    assert lee[2].startswith('met at the fair\n[Calendly] Rendez-vous « Atelier de groupe »')
    assert database.execute('SELECT type, count(*) FROM notifications GROUP BY type ORDER BY type') == [
        ('calendly_appointment_booked', 1), ('calendly_prospect_created', 7)]
    (watermark, last_error), = database.execute(
        'SELECT watermark, last_error FROM crm_realtime.calendly_connection')
    assert last_error is None and watermark > connection.watermark


@pytest.mark.gen_test(timeout=60)
async def test_unchanged_events_are_not_fetched_again(database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    group = fake_calendly.book(TOKEN, email='g1@example.com', name='Gil One', start=soon(), limit=5)
    fake_calendly.book(TOKEN, email='solo@example.com', name='Solo', start=soon(days=3))
    first = await component.poller.poll_connection(connection.id)
    second = await component.poller.poll_connection(connection.id)
    fake_calendly.book(TOKEN, email='g2@example.com', name='Gil Two', event=group['event'])
    third = await component.poller.poll_connection(connection.id)
    assert [(r.events, r.events_fetched, r.applied) for r in (first, second, third)] == [
        (2, 2, 2), (2, 0, 0), (2, 1, 1)]


@pytest.mark.parametrize('first', ['webhook', 'poll'])
@pytest.mark.gen_test(timeout=60)
async def test_webhook_and_poll_of_the_same_booking_change_the_crm_once(
        database, fake_calendly, make_sidecar, clients, first):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    c = await clients(sc.url, make_token(1, 11))
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())

    if first == 'webhook':
        (response,) = await fake_calendly.deliver('invitee.created', invitee)
        result = await component.poller.poll_connection(connection.id)
        assert json.loads(response.body) == {'status': 'prospect_created'}
        assert (result.bookings, result.applied) == (1, 0)
    else:
        result = await component.poller.poll_connection(connection.id)
        (response,) = await fake_calendly.deliver('invitee.created', invitee)
        assert result.applied == 1 and json.loads(response.body) == {'status': 'duplicate'}

    database.insert_prospect(1, firstname='Marker')
    await c.wait_for(lambda r: any(p['firstname'] == 'Marker' for p in r.named('prospect:created')))
    assert [e[0] for e in c.events] == ['prospect:created', 'notification', 'prospect:created']
    assert database.execute('SELECT via, outcome FROM crm_realtime.calendly_booking') == [
        (first, 'prospect_created')]


@pytest.mark.gen_test(timeout=60)
async def test_poll_sees_cancellations_and_reschedules_webhooks_missed(database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    dana = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon(days=1))
    lee = fake_calendly.book(TOKEN, email='lee@example.com', name='Lee Wong', start=soon(days=2))
    fake_calendly.cancel(dana['uri'], reason='Sick')
    fake_calendly.reschedule(TOKEN, lee['uri'], soon(days=4))

    result = await component.poller.poll_connection(connection.id)

    assert result.error is None
    notes = {email: n.splitlines() for email, _, _, _, _, n in prospects(database)}
    assert [line.split(' « ')[0] for line in notes['dana@example.com']] == ['[Calendly] Rendez-vous'] * 2
    assert notes['dana@example.com'][1].endswith('annulé par Dana Reyes : Sick')
    # the old slot first (its booking, then "moved"), the new one last: events are listed by start
    assert notes['lee@example.com'][0].startswith('[Calendly] Rendez-vous « 30 Minute Consultation »')
    assert notes['lee@example.com'][1].endswith('déplacé vers un autre créneau')
    assert notes['lee@example.com'][2].startswith('[Calendly] Rendez-vous reprogrammé')


@pytest.mark.parametrize('headers', [{'Retry-After': '1'}, {'X-RateLimit-Reset': '1'}])
@pytest.mark.gen_test(timeout=60)
async def test_poll_waits_out_a_429_then_succeeds(database, fake_calendly, make_sidecar, headers):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    fake_calendly.fail(EVENTS, 429, headers=headers)
    began = time.monotonic()
    result = await component.poller.poll_connection(connection.id)
    waited = time.monotonic() - began
    assert result.error is None and result.applied == 1
    assert fake_calendly.count('GET', EVENTS) == 2 and waited >= 1.0


@pytest.mark.gen_test(timeout=60)
async def test_a_rate_limit_too_long_to_wait_stops_the_poll_and_keeps_the_watermark(
        database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    fake_calendly.fail(EVENTS, 429, headers={'X-RateLimit-Reset': '3600'})
    result = await component.poller.poll_connection(connection.id)
    assert 'RateLimited' in result.error and fake_calendly.count('GET', EVENTS) == 1
    row = database.execute('SELECT watermark, status, last_error FROM crm_realtime.calendly_connection')[0]
    assert row[0] == connection.watermark and row[1] == 'active' and 'retry after 3600 s' in row[2]
    retry = await component.poller.poll_connection(connection.id)
    assert retry.error is None and retry.applied == 1


@pytest.mark.gen_test(timeout=60)
async def test_poll_backs_off_on_5xx_and_timeouts_then_succeeds(database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    fake_calendly.fail(EVENTS, 500)
    fake_calendly.fail(INVITEES, 503)
    fake_calendly.slow(INVITEES, 1.5)           # longer than FAST.request_timeout
    result = await component.poller.poll_connection(connection.id)
    assert result.error is None and result.applied == 1
    assert fake_calendly.count('GET', EVENTS) == 2 and fake_calendly.count('GET', INVITEES) == 3


@pytest.mark.gen_test(timeout=60)
async def test_persistent_5xx_stops_the_poll_keeps_the_watermark_and_the_next_poll_catches_up(
        database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    fake_calendly.fail(INVITEES, 500, times=FAST.attempts)
    result = await component.poller.poll_connection(connection.id)
    assert 'Unavailable' in result.error and fake_calendly.count('GET', INVITEES) == FAST.attempts
    assert database.execute('SELECT count(*) FROM prospects') == [(0,)]
    row = database.execute('SELECT watermark, last_error FROM crm_realtime.calendly_connection')[0]
    assert row[0] == connection.watermark and 'HTTP 500 after 4 attempts' in row[1]
    retry = await component.poller.poll_connection(connection.id)
    assert retry.error is None and retry.applied == 1


@pytest.mark.gen_test(timeout=60)
async def test_401_marks_the_connection_needing_reauth_and_stops_polling_it(
        database, fake_calendly, make_sidecar, caplog):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    fake_calendly.revoke(TOKEN)

    await component.poll_all()

    row = database.execute('SELECT status, last_error FROM crm_realtime.calendly_connection')[0]
    assert row == ('needs_reauth', 'Calendly answered 401 Unauthenticated: The access token is invalid')
    metrics = (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body.decode()
    assert 'crm_realtime_calendly_connections_needing_reauth 1.0' in metrics
    assert 'crm_realtime_calendly_polls_total{result="failed"} 1.0' in metrics
    assert TOKEN not in caplog.text
    requests = len(fake_calendly.requests)
    await component.poll_all()
    assert len(fake_calendly.requests) == requests          # not retried forever

    # re-authorising (connect again with a new token) makes it active and polled again
    fake_calendly.tokens['new-token'] = _user_of(connection)
    await component.store.save(organization_id='1', scope='organization', subject=connection.subject,
                               calendly_organization=connection.calendly_organization,
                               calendly_user=connection.calendly_user, token='new-token')
    await component.poll_all()
    assert database.execute('SELECT status, last_error FROM crm_realtime.calendly_connection') == [
        ('active', None)]
    metrics = (await AsyncHTTPClient().fetch(sc.url + '/metrics')).body.decode()
    assert 'crm_realtime_calendly_connections_needing_reauth 0.0' in metrics


def _user_of(connection):
    return {'uri': connection.calendly_user, 'name': 'Sam Ortiz', 'email': 'sam@clinic.example',
            'timezone': 'UTC', 'current_organization': connection.calendly_organization, 'admin': True}


@pytest.mark.gen_test(timeout=60)
async def test_403_is_recorded_and_retried_next_interval(database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    fake_calendly.tokens[TOKEN]['admin'] = False     # lost the admin role: organization listing refused
    result = await component.poller.poll_connection(connection.id)
    assert 'Forbidden' in result.error and 'Permission Denied' in result.error
    assert database.execute('SELECT status FROM crm_realtime.calendly_connection') == [('active',)]


@pytest.mark.gen_test(timeout=60)
async def test_one_poll_of_a_connection_at_a_time_across_replicas(database, fake_calendly, make_sidecar):
    sc1, component1, connection = await start(database, make_sidecar, fake_calendly)
    sc2 = await make_sidecar(database, **calendly_env(fake_calendly))
    component2 = component_of(sc2)
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    fake_calendly.slow(EVENTS, 0.5)          # the first poll holds the lock for a while

    results = await asyncio.gather(component1.poller.poll_connection(connection.id),
                                   component2.poller.poll_connection(connection.id))

    assert sorted(r.locked_out for r in results) == [False, True]
    assert fake_calendly.count('GET', EVENTS) == 1
    assert database.execute('SELECT count(*) FROM prospects') == [(1,)]
    # the lock is released afterwards: the other replica can poll next time
    assert not (await component2.poller.poll_connection(connection.id)).locked_out


@pytest.mark.gen_test(timeout=60)
async def test_replicas_poll_each_connection_once_per_interval(database, fake_calendly, make_sidecar):
    """Each replica runs the scheduled job; a connection polled by one is skipped by the others."""
    sc1, component1, connection = await start(database, make_sidecar, fake_calendly)
    replicas = [component1] + [component_of(await make_sidecar(database, **calendly_env(fake_calendly)))
                               for _ in range(2)]
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    for component in replicas:            # the three scheduled runs of one interval, one after another
        await component.poll_all()
    assert fake_calendly.count('GET', EVENTS) == 1
    assert database.execute('SELECT count(*) FROM prospects') == [(1,)]
    # an operator's `calendly poll` (no gap) still polls at once
    assert (await replicas[1].poller.poll_connection(connection.id)).polled
    assert fake_calendly.count('GET', EVENTS) == 2
    # once the interval has passed (calendly_env's is a day), the next scheduled run polls again
    database.execute("UPDATE crm_realtime.calendly_connection SET last_poll_at = now() - interval '2 days'")
    await replicas[2].poll_all()
    assert fake_calendly.count('GET', EVENTS) == 3


@pytest.mark.gen_test(timeout=60)
async def test_the_scheduled_job_polls_on_its_interval(database, fake_calendly, make_sidecar, clients):
    sc = await make_sidecar(database, **calendly_env(fake_calendly, SIDECAR_CALENDLY_POLL_SECONDS='5'))
    fake_calendly.add_user(TOKEN)
    await connect(sc, fake_calendly, TOKEN)
    job = sc.scheduler.get_job('calendly-poll')
    assert job.trigger.interval == timedelta(seconds=5) and job.trigger.jitter == 1
    c = await clients(sc.url, make_token(1, 11))
    fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=soon())
    await c.wait_for(lambda r: r.named('prospect:created') and r.named('notification'), timeout=20)
    assert c.named('prospect:created')[0]['email'] == 'dana@example.com'


@pytest.mark.gen_test(timeout=60)
async def test_first_poll_comes_soon_after_start_up_within_the_setting(database, fake_calendly, make_sidecar):
    before = datetime.now(timezone.utc)
    sc = await make_sidecar(database, **calendly_env(fake_calendly, SIDECAR_CALENDLY_POLL_SECONDS='600',
                                                     SIDECAR_CALENDLY_FIRST_POLL_SECONDS='20'))
    after = datetime.now(timezone.utc)
    job = sc.scheduler.get_job('calendly-poll')
    assert job.trigger.interval == timedelta(seconds=600)
    assert before + timedelta(seconds=5) <= job.next_run_time <= after + timedelta(seconds=20)


@pytest.mark.gen_test(timeout=60)
async def test_reauth_gauge_is_right_from_start_up(database, fake_calendly, make_sidecar):
    sc, component, connection = await start(database, make_sidecar, fake_calendly)
    await component.store.mark_needs_reauth(connection.id, 'Calendly answered 401')
    restarted = await make_sidecar(database, **calendly_env(fake_calendly))
    deadline = time.monotonic() + 10
    while True:
        metrics = (await AsyncHTTPClient().fetch(restarted.url + '/metrics')).body.decode()
        if 'crm_realtime_calendly_connections_needing_reauth 1.0' in metrics:
            break
        assert time.monotonic() < deadline, 'the gauge never counted the connection'
        await asyncio.sleep(0.05)
    assert fake_calendly.requests == []       # counted from the database, no poll needed


@pytest.mark.gen_test(timeout=60)
async def test_a_sidecar_without_the_encryption_key_says_so_when_connections_exist(
        database, fake_calendly, make_sidecar, caplog):
    import logging
    await start(database, make_sidecar, fake_calendly)          # a connection, stored with the key
    caplog.set_level(logging.INFO, logger='crm_realtime')
    env = calendly_env(fake_calendly)
    del env['SIDECAR_CALENDLY_ENCRYPTION_KEY']
    keyless = component_of(await make_sidecar(database, **env))
    assert await keyless.check_state() == 'on'
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any('SIDECAR_CALENDLY_ENCRYPTION_KEY is not set' in m and 'webhooks answer 503' in m
               for m in errors), errors
