"""Calendly's database side: tables declared once (sql/install.sql), one pool per process.

The store and the CRM writer hold no table declarations of their own: the
columns they read are checked against the installed tables, and every store
statement runs once against a real database, so a column renamed in
install.sql fails here. A running sidecar polls and takes webhooks on its one
psycopg pool: no other session of its own shows up in pg_stat_activity.
"""
from datetime import datetime, timedelta, timezone

import pytest

from fake_calendly import calendly_env, component_of, connect
from sidecar.calendly.store import CONNECTION_COLUMNS

pytestmark = pytest.mark.usefixtures('io_loop')

TOKEN = 'calendly-token-store-tests'


def installed_columns(database, table):
    return [r[0] for r in database.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'crm_realtime' "
        "AND table_name = %s ORDER BY ordinal_position", (table,))]


def test_the_store_reads_only_columns_install_sql_declares(database):
    columns = installed_columns(database, 'calendly_connection')
    assert set(CONNECTION_COLUMNS) <= set(columns), set(CONNECTION_COLUMNS) - set(columns)
    # every column but updated_at (written by each UPDATE, never read) reaches Connection
    assert set(columns) - set(CONNECTION_COLUMNS) == {'updated_at'}


@pytest.mark.gen_test(timeout=60)
async def test_every_store_statement_runs_against_the_installed_tables(database, fake_calendly, make_sidecar):
    sc = await make_sidecar(database, **calendly_env(fake_calendly))
    store = component_of(sc).store
    fake_calendly.add_user(TOKEN)
    connection = await connect(sc, fake_calendly, TOKEN, organization_id='1')
    assert connection.organization_id == '1' and connection.has_signing_key
    assert [c.id for c in await store.list()] == [connection.id]
    assert await store.count() == 1 and await store.count_needing_reauth() == 0

    started = datetime.now(timezone.utc)
    await store.finish_poll(connection.id, started, None)
    assert (await store.get(connection.id)).watermark >= started
    await store.finish_poll(connection.id, started + timedelta(days=1), 'Calendly answered 500')
    again = await store.get(connection.id)
    assert again.watermark < started + timedelta(days=1) and again.last_error == 'Calendly answered 500'

    start = datetime(2026, 3, 5, 17, tzinfo=timezone.utc)
    await store.mark_event_seen(connection.id, 'https://x/scheduled_events/a', 'fp1', start)
    await store.mark_event_seen(connection.id, 'https://x/scheduled_events/a', 'fp2', start)
    assert await store.seen_events(connection.id) == {'https://x/scheduled_events/a': 'fp2'}
    await store.forget_events_before(connection.id, start + timedelta(seconds=1))
    assert await store.seen_events(connection.id) == {}

    assert not await store.already_applied('1', 'invitee.created', 'https://x/invitees/none')
    async with store.poll_lock(connection.id) as held:
        assert held is not None
        async with store.poll_lock(connection.id) as second:
            assert second is None           # another session holds it
    async with store.poll_lock(connection.id) as again_held:
        assert again_held is not None       # released before the connection went back to the pool

    await store.mark_needs_reauth(connection.id, 'Calendly answered 401')
    assert await store.count_needing_reauth() == 1
    assert await store.get('not-a-uuid') is None        # refused before the database
    assert await store.delete(connection.id) and await store.get(connection.id) is None


@pytest.mark.gen_test(timeout=60)
async def test_a_sidecar_runs_calendly_on_its_one_pool(database, fake_calendly, make_sidecar):
    sc = await make_sidecar(database, **calendly_env(fake_calendly))
    component = component_of(sc)
    assert component.pool is sc.pool
    fake_calendly.add_user(TOKEN)
    connection = await connect(sc, fake_calendly, TOKEN, organization_id='1')
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime('%Y-%m-%dT%H:%M:%S.000000Z')
    booked = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes', start=tomorrow)
    (response,) = await fake_calendly.deliver('invitee.created', booked)
    assert response.code == 200
    fake_calendly.book(TOKEN, email='lee@example.com', name='Lee Wong', start=tomorrow)   # no webhook
    result = await component.poller.poll_connection(connection.id)
    assert (result.polled, result.error, result.bookings, result.applied) == (True, None, 2, 1)
    sessions = database.execute(
        "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'crm-realtime%%' GROUP BY 1 ORDER BY 1")
    names = [name for name, _ in sessions]
    assert names == ['crm-realtime', 'crm-realtime listener'], sessions
    assert dict(sessions)['crm-realtime'] <= sc.pool.max_size
