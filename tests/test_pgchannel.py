"""The listener's libpq channel (sidecar/pgchannel.py): errors, bounds, one reader."""
import asyncio

import psycopg
import pytest

from sidecar import journal
from sidecar.pgchannel import Channel

pytestmark = pytest.mark.usefixtures('io_loop')


async def _channel(database, timeout=5):
    conn = await psycopg.AsyncConnection.connect(database.conninfo, autocommit=True)
    return conn, Channel(conn, timeout)


@pytest.mark.gen_test(timeout=30)
async def test_an_error_raises_psycopgs_class_and_the_connection_stays_usable(database):
    conn, chan = await _channel(database)
    try:
        with pytest.raises(psycopg.errors.UndefinedTable) as info:
            await chan.prepared('missing', 'SELECT * FROM crm_realtime.no_such_table WHERE $1', (b't',))
        assert 'crm_realtime.no_such_table' in str(info.value)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await chan.simple('SELECT 1 / 0')
        assert (await chan.simple('SELECT 6 * 7'))[-1].get_value(0, 0) == b'42'
        # prepared once per connection, then reused
        for n in range(3):
            result = await chan.prepared('echo', 'SELECT $1::int + 1', (str(n).encode(),))
            assert result.get_value(0, 0) == str(n + 1).encode()
        assert (await chan.simple("SELECT count(*) FROM pg_prepared_statements "
                                  "WHERE name = 'crm_rt_echo'"))[-1].get_value(0, 0) == b'1'
    finally:
        chan.close()
        await conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_read_decodes_the_journal_rows_as_changes(database):
    conn, chan = await _channel(database)
    try:
        since = await journal.current_snapshot(chan)
        database.insert_prospect(1, firstname='Zoé')
        database.insert_prospect(2, firstname='other')
        after, total, changes = await journal.read_since_for(chan, since, {'1'})
        assert journal.valid_snapshot(after) and total == 2
        (change,) = changes
        assert (change.kind, change.op, change.organization_id, change.user_id, change.part) == \
            ('prospect', 'created', '1', None, None)
        assert isinstance(change.id, int) and isinstance(change.recorded_at, float)
        assert '"Zoé"' in change.data          # the payload's JSON text, decoded only when routed
        after2, changes2 = await journal.read_since(chan, since)
        assert [c.organization_id for c in changes2] == ['1', '2']
        assert [c.organization_id for c in await journal.read_between(chan, since, after2, {'2'})] == ['2']
    finally:
        chan.close()
        await conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_query_past_its_bound_closes_the_connection_and_raises(database):
    conn, chan = await _channel(database, timeout=0.3)
    loop = asyncio.get_running_loop()
    fd = chan.pgconn.socket
    try:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await chan.simple('SELECT pg_sleep(5)')
        assert loop.time() - started < 2
        assert conn.closed
        assert not loop.remove_reader(fd)        # the loop no longer watches the socket
        with pytest.raises(TimeoutError):        # and the channel says why, from now on
            await chan.simple('SELECT 1')
    finally:
        chan.close()
        await conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_backend_that_goes_away_fails_the_wait(database):
    conn, chan = await _channel(database)
    try:
        pid = (await chan.simple('SELECT pg_backend_pid()'))[-1].get_value(0, 0).decode()
        fd = chan.pgconn.socket
        waiting = asyncio.ensure_future(chan.wait(30))
        await asyncio.sleep(0.1)
        database.execute('SELECT pg_terminate_backend(%s)', [int(pid)])
        try:
            assert await asyncio.wait_for(waiting, 5) is True    # woken by the server's goodbye
        except psycopg.OperationalError:
            pass                                                  # or by the closed socket
        with pytest.raises(psycopg.OperationalError):
            await chan.simple('SELECT 1')
        assert conn.closed
        assert not asyncio.get_running_loop().remove_reader(fd)   # the loop forgot the socket
    finally:
        chan.close()
        await conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_socket_reader_is_registered_once_not_per_query(database, monkeypatch):
    loop = asyncio.get_running_loop()
    conn = await psycopg.AsyncConnection.connect(database.conninfo, autocommit=True)
    calls = []
    for name in ('add_reader', 'remove_reader'):
        original = getattr(loop, name)
        monkeypatch.setattr(loop, name, lambda *a, _o=original, _n=name: (calls.append(_n), _o(*a))[1])
    chan = Channel(conn, 5)
    try:
        for _ in range(5):
            await chan.simple('SELECT 1')
        assert calls == ['add_reader']
    finally:
        chan.close()
        await conn.close()
    assert calls == ['add_reader', 'remove_reader']


@pytest.mark.gen_test(timeout=30)
async def test_a_notification_parsed_with_a_querys_result_is_not_lost(database):
    """A notification of the session's own transaction comes in the same packet as the
    query's end: libpq parses it while the results are collected. It must still wake
    the next wait at once (a lost one waited for the idle timer: 5 s in a benchmark)."""
    conn, chan = await _channel(database)
    try:
        await chan.simple('LISTEN crm_realtime')
        for _ in range(3):
            await chan.simple("SELECT pg_notify('crm_realtime', '')")
            assert await asyncio.wait_for(chan.wait(5), 1) is True
        assert await chan.wait(0.2) is False            # and nothing left over
    finally:
        chan.close()
        await conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_notification_read_behind_a_querys_end_is_not_lost(database):
    """Another session's notification, sent just after the query's ReadyForQuery, read
    off the socket together with it: libpq parses it while the results are collected,
    not when the reader asks for notifications. It must still wake the next wait at once
    (a lost one waits for the idle timer, listener_check_seconds)."""
    import time
    conn, chan = await _channel(database)
    try:
        await chan.simple('LISTEN crm_realtime')
        for _ in range(3):
            query = asyncio.ensure_future(chan.simple('SELECT 1'))
            await asyncio.sleep(0)                          # sent
            time.sleep(0.2)     # the loop is blocked: the query ends, its end waits unread
            database.execute("SELECT pg_notify('crm_realtime', '')")   # sent behind it
            time.sleep(0.1)
            await query         # both are read in one go
            assert await asyncio.wait_for(chan.wait(5), 1) is True
        assert await chan.wait(0.2) is False            # and nothing left over
    finally:
        chan.close()
        await conn.close()
