"""Exactly once under concurrency: two replicas on one database applying the same booking.

The deterministic tests hold the prospects table locked from a third session
until both processors are provably inside their transactions, waiting in
PostgreSQL (pg_stat_activity), and only then let them go.
"""
import asyncio
import json

import psycopg
import pytest

from fake_calendly import calendly_env, component_of, connect
from sidecar.calendly import booking as bk

pytestmark = pytest.mark.usefixtures('io_loop')

TOKEN = 'calendly-token-org-one-admin'


async def two_replicas(database, make_sidecar, fake):
    sc1 = await make_sidecar(database, **calendly_env(fake))
    sc2 = await make_sidecar(database, **calendly_env(fake))
    fake.add_user(TOKEN)
    connection = await connect(sc1, fake, TOKEN)
    return sc1, sc2, component_of(sc1), component_of(sc2), connection


async def waiting_backends(database, n, timeout=10.0):
    """Wait until ``n`` Calendly sessions are blocked on a lock; return their wait events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        waits = database.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE application_name LIKE 'crm-realtime%%' "
            "AND wait_event_type = 'Lock' AND datname = current_database()")
        if len(waits) >= n:
            return sorted(w[0] for w in waits)
        assert loop.time() < deadline, f'only {len(waits)} processors reached the lock'
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=60)
async def test_two_replicas_applying_one_booking_at_once_change_the_crm_once(
        database, fake_calendly, make_sidecar):
    sc1, sc2, one, two, connection = await two_replicas(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    booking = bk.from_invitee(bk.CREATED, invitee, fake_calendly.event_of(invitee))

    with psycopg.connect(database.conninfo) as blocker:
        blocker.execute('LOCK TABLE prospects IN EXCLUSIVE MODE')
        first = asyncio.ensure_future(one.apply(connection, booking, 'webhook'))
        second = asyncio.ensure_future(two.apply(connection, booking, 'poll'))
        # one waits on the prospects table, the other on the first one's locks
        assert len(await waiting_backends(database, 2)) == 2
        blocker.rollback()
        outcomes = await asyncio.gather(first, second)

    assert sorted(o.outcome for o in outcomes) == ['duplicate', 'prospect_created']
    assert database.execute('SELECT count(*) FROM prospects') == [(1,)]
    assert database.execute('SELECT count(*) FROM notifications') == [(1,)]
    assert database.execute('SELECT count(*) FROM crm_realtime.calendly_booking') == [(1,)]


@pytest.mark.gen_test(timeout=60)
async def test_two_bookings_of_one_new_person_at_once_make_one_prospect(database, fake_calendly, make_sidecar):
    sc1, sc2, one, two, connection = await two_replicas(database, make_sidecar, fake_calendly)
    morning = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes',
                                 start='2026-03-05T17:00:00.000000Z')
    evening = fake_calendly.book(TOKEN, email='DANA@Example.com', name='Dana Reyes',
                                 start='2026-03-06T01:00:00.000000Z')
    bookings = [bk.from_invitee(bk.CREATED, i, fake_calendly.event_of(i)) for i in (morning, evening)]

    with psycopg.connect(database.conninfo) as blocker:
        blocker.execute('LOCK TABLE prospects IN EXCLUSIVE MODE')
        tasks = [asyncio.ensure_future(one.apply(connection, bookings[0], 'webhook')),
                 asyncio.ensure_future(two.apply(connection, bookings[1], 'webhook'))]
        await waiting_backends(database, 2)
        blocker.rollback()
        outcomes = await asyncio.gather(*tasks)

    assert sorted(o.outcome for o in outcomes) == ['appointment_added', 'prospect_created']
    (notes,), = database.execute('SELECT notes FROM prospects')
    assert len(notes.splitlines()) == 2
    assert database.execute('SELECT type FROM notifications ORDER BY type') == [
        ('calendly_appointment_booked',), ('calendly_prospect_created',)]


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_of_duplicate_deliveries_to_two_replicas_applies_once(
        database, fake_calendly, make_sidecar):
    sc1, sc2, one, two, connection = await two_replicas(database, make_sidecar, fake_calendly)
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    body = fake_calendly.encode(fake_calendly.envelope('invitee.created', invitee))
    key = one.store.signing_key(connection)

    responses = await asyncio.gather(*(
        fake_calendly.post_signed(f'{sc.url}/webhooks/calendly/{connection.id}', body, key)
        for sc in [sc1, sc2] * 5))

    assert [r.code for r in responses] == [200] * 10
    statuses = sorted(json.loads(r.body)['status'] for r in responses)
    assert statuses == ['duplicate'] * 9 + ['prospect_created']
    assert database.execute('SELECT count(*) FROM prospects') == [(1,)]
    assert database.execute('SELECT count(*) FROM notifications') == [(1,)]
