"""The LISTEN connection: readiness, and healing without losing events."""
import asyncio
import json
import time
import urllib.error
import urllib.request

import psycopg

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from conftest import Database, SidecarProcess, make_token, sidecar_env
from sidecar.sqlfiles import sql_text as sql_text_of

pytestmark = pytest.mark.usefixtures('io_loop')


async def _get(url):
    try:
        r = await AsyncHTTPClient().fetch(url, raise_error=True)
        return r.code, r.body
    except HTTPClientError as exc:
        return exc.code, exc.response.body if exc.response else b''


@pytest.mark.gen_test(timeout=60)
async def test_health_and_ready(database, make_sidecar):
    sc = await make_sidecar(database)
    assert (await _get(sc.url + '/healthz'))[0] == 200
    code, body = await _get(sc.url + '/readyz')
    assert code == 200 and json.loads(body)['status'] == 'ready'


@pytest.mark.gen_test(timeout=60)
async def test_metrics_are_prometheus_text(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    database.insert_prospect(1)
    await c.wait_events(1)
    code, body = await _get(sc.url + '/metrics')
    text = body.decode()
    assert code == 200
    assert 'crm_realtime_connected_clients 1.0' in text
    assert 'crm_realtime_events_emitted_total{event="prospect:created"} 1.0' in text
    assert 'crm_realtime_listener_up 1.0' in text
    assert 'crm_realtime_notify_queue_usage' in text


def test_database_unreachable_process_up_but_not_ready(database):
    """A database that is not there: /healthz 200, /readyz 503 with a readable reason."""
    bad = Database(database.admin_url, 'crm_rt_does_not_exist')
    p = SidecarProcess(sidecar_env(bad)).start(wait_ready=False)
    try:
        deadline = time.time() + 15
        status = None
        while status is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(p.url + '/healthz', timeout=1) as r:
                    status = r.status
            except OSError:
                time.sleep(0.1)
        assert status == 200, p.log()
        body = {}
        while time.time() < deadline and not body.get('last_error'):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(p.url + '/readyz', timeout=2)
            assert info.value.code == 503
            body = json.loads(info.value.read())
            time.sleep(0.1)
        assert body['listener'] == 'down' and 'does not exist' in body['last_error']
        time.sleep(1.5)
        assert 'listener connection lost' in p.log() and 'reconnecting in' in p.log()
    finally:
        p.stop()


async def _writes_while_killing_the_listener(database, total):
    async def writer():
        for i in range(total):
            await asyncio.get_running_loop().run_in_executor(
                None, lambda i=i: database.insert_prospect(1, firstname=f'w{i}'))
            await asyncio.sleep(0.02)

    async def killer():
        for _ in range(3):
            await asyncio.sleep(0.25)
            database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE application_name = 'crm-realtime listener' AND datname = %s",
                             [database.name])

    await asyncio.gather(writer(), killer())


@pytest.mark.parametrize('client', ['python', 'node'])
@pytest.mark.gen_test(timeout=90)
async def test_listener_killed_under_writes_loses_and_duplicates_nothing(
        client, database, make_sidecar, clients, node_clients):
    sc = await make_sidecar(database)
    if client == 'node':
        c = await node_clients(sc.url, make_token(1, 11), transports=('websocket',))
        await c.wait_for(lambda n: n.of_type('connect'))
    else:
        c = await clients(sc.url, make_token(1, 11))
    total = 50
    await _writes_while_killing_the_listener(database, total)
    await c.wait_events(total, timeout=30)
    await asyncio.sleep(1.5)   # anything duplicated would arrive by now (check interval is 1 s)
    assert [e[1]['firstname'] for e in c.events] == [f'w{i}' for i in range(total)]
    assert sc.listener.reconnects >= 1
    assert sc.listener.ready


@pytest.mark.gen_test(timeout=60)
async def test_readyz_is_503_while_listener_is_down(database, make_sidecar):
    sc = await make_sidecar(database, SIDECAR_LISTENER_MAX_BACKOFF_SECONDS='3')
    # Block new connections to this database so the listener cannot come back at once.
    with psycopg.connect(database.admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'crm-realtime listener' AND datname = %s",
                      [database.name])
    try:
        for _ in range(100):
            if not sc.listener.ready:
                break
            await asyncio.sleep(0.05)
        code, _ = await _get(sc.url + '/readyz')
        assert code == 503
    finally:
        with psycopg.connect(database.admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database.name}" WITH ALLOW_CONNECTIONS true')
    for _ in range(200):
        if sc.listener.ready:
            break
        await asyncio.sleep(0.05)
    assert (await _get(sc.url + '/readyz'))[0] == 200


class FreezableProxy:
    """TCP proxy to PostgreSQL that can stop forwarding without closing anything,
    like a backend (or a network path) that stops answering."""

    def __init__(self, target_port=5432):
        self.target_port = target_port
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server = None
        self.port = None

    async def start(self):
        self.server = await asyncio.start_server(self._handle, '127.0.0.1', 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def freeze(self):
        self.thawed.clear()

    def thaw(self):
        self.thawed.set()

    async def _pipe(self, reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self.thawed.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection('127.0.0.1', self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def close(self):
        self.server.close()


@pytest.mark.gen_test(timeout=90)
async def test_unresponsive_backend_is_detected_and_replaced(database, make_sidecar, clients):
    info = psycopg.conninfo.conninfo_to_dict(database.conninfo)
    if info.get('host', '').startswith('/'):
        pytest.skip('needs PostgreSQL over TCP')
    proxy = await FreezableProxy(int(info.get('port', 5432))).start()
    url = f"postgresql://{info.get('user', 'postgres')}@127.0.0.1:{proxy.port}/{database.name}"
    try:
        sc = await make_sidecar(database, SIDECAR_DATABASE_URL=url)
        c = await clients(sc.url, make_token(1, 11))
        database.insert_prospect(1, firstname='before')
        await c.wait_events(1)

        proxy.freeze()              # nothing passes any more, nothing is closed
        database.insert_prospect(1, firstname='during')   # written directly, not through the proxy
        for _ in range(200):        # check 1 s + probe timeout 2 s
            if not sc.listener.ready:
                break
            await asyncio.sleep(0.05)
        assert not sc.listener.ready
        assert (await _get(sc.url + '/readyz'))[0] == 503
        assert 'TimeoutError' in (sc.listener.last_error or '') or sc.listener.reconnects >= 1

        proxy.thaw()
        database.insert_prospect(1, firstname='after')
        await c.wait_events(3, timeout=30)
        await asyncio.sleep(1.5)
        assert [e[1]['firstname'] for e in c.events] == ['before', 'during', 'after']
        assert sc.listener.ready
    finally:
        proxy.thaw()
        await proxy.close()


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_jobs_interrupted_by_shutdown_end_quietly(database, make_sidecar, caplog):
    """A stop can cancel a running poll or prune: it is logged, not raised (no traceback)."""
    import logging
    sc = await make_sidecar(database)
    (calendly,) = sc.components

    async def never_ending(**kwargs):
        await asyncio.Event().wait()

    calendly.poller.poll_all = never_ending

    async def cancelled_midway(job):
        task = asyncio.ensure_future(job)
        await asyncio.sleep(0.2)     # let it reach its wait
        assert not task.done()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done() and not task.cancelled() and task.exception() is None

    with caplog.at_level(logging.INFO, logger='crm_realtime'):
        await cancelled_midway(calendly.poll_all())
        # hold the row prune() updates, so the prune is waiting in PostgreSQL when cancelled
        database.insert_prospect(1)          # something in the journal: prune reaches its UPDATE
        with database.connect(autocommit=False) as blocker:
            blocker.execute('SELECT * FROM crm_realtime.journal_state FOR UPDATE')
            await cancelled_midway(sc.prune_journal())
            blocker.rollback()
    messages = [r.getMessage() for r in caplog.records]
    assert any('calendly poll run interrupted by shutdown' in m for m in messages)
    assert any('journal prune interrupted by shutdown' in m for m in messages)



@pytest.mark.gen_test(timeout=60)
async def test_a_notification_taken_in_during_a_query_still_wakes_the_listener(database):
    """Between reads the listener sleeps on its socket. A NOTIFY that the channel already
    read off the socket during a query (the journal read) must wake it at once, not
    after the idle probe interval."""
    from sidecar.listener import Listener
    from sidecar.pgchannel import Channel
    from sidecar.settings import load_settings
    listener = Listener(load_settings(sidecar_env(database)))
    conn = await psycopg.AsyncConnection.connect(database.conninfo, autocommit=True)
    chan = listener._chan = Channel(conn, 5)
    try:
        await chan.simple('LISTEN crm_realtime')
        database.execute("SELECT pg_notify('crm_realtime', '')")
        await chan.simple('SELECT pg_sleep(0.2)')      # the notification arrives during this query
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await listener._notified(chan, 5) is True
        assert loop.time() - started < 1
        # and with nothing pending it sleeps until the timeout, then says so
        started = loop.time()
        assert await listener._notified(chan, 0.5) is False
        assert loop.time() - started >= 0.45
        # a notification while it sleeps wakes it
        sleeper = asyncio.ensure_future(listener._notified(chan, 5))
        await asyncio.sleep(0.2)
        database.execute("SELECT pg_notify('crm_realtime', '')")
        assert await asyncio.wait_for(sleeper, 2) is True
        # wake() ends the sleep at once
        sleeper = asyncio.ensure_future(listener._notified(chan, 30))
        await asyncio.sleep(0.2)
        listener.wake()
        assert await asyncio.wait_for(sleeper, 2) is True
        # a query still works after all that, and a notification during it is kept
        database.execute("SELECT pg_notify('crm_realtime', '')")
        await asyncio.sleep(0.2)                         # read by the channel, nobody waiting
        assert (await chan.simple('SELECT 41 + 1'))[-1].get_value(0, 0) == b'42'
        assert await asyncio.wait_for(listener._notified(chan, 5), 1) is True
        # stop() ends the sleep at once
        sleeper = asyncio.ensure_future(listener._notified(chan, 30))
        await asyncio.sleep(0.2)
        await listener.stop()
        assert await asyncio.wait_for(sleeper, 2) is False
    finally:
        chan.close()
        await conn.close()


def _retry_delays(log_text):
    import re
    return [float(x) for x in re.findall(r'retrying in ([\d.]+)s', log_text)]


def test_serving_before_the_dba_step_names_the_fix_and_backs_off(empty_database):
    """No crm_realtime schema yet: one sentence naming install.sql, the same on /readyz,
    retries further and further apart; once the DBA installs, it becomes ready."""
    db = empty_database
    db.execute(sql_text_of('examples/reference_crm.sql'))
    p = SidecarProcess(sidecar_env(db, SIDECAR_LISTENER_MAX_BACKOFF_SECONDS='4')).start(wait_ready=False)
    try:
        p.wait_ok('/healthz', what='up')
        # three retries logged (a loaded machine starts slower; bounded either way)
        deadline = time.time() + 15
        while len(_retry_delays(p.log())) < 3 and time.time() < deadline:
            time.sleep(0.1)
        log_text = p.log()
        sentence = (f'the crm_realtime schema is not installed in database "{db.name}": as the DBA, '
                    f'run sql/install.sql (psql -v ON_ERROR_STOP=1 -d {db.name} -f sql/install.sql) '
                    f'or crm-realtime install-sql')
        assert f'listener: {sentence}; retrying in' in log_text
        assert 'Traceback' not in log_text and 'UndefinedTable' not in log_text
        delays = _retry_delays(log_text)
        assert 2 <= len(delays) <= 6, delays            # it was 28 in 6 s
        assert delays == sorted(delays) and delays[-1] > 2 * delays[0], delays
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(p.url + '/readyz', timeout=2)
        assert info.value.code == 503
        assert json.loads(info.value.read())['last_error'] == sentence

        db.execute(sql_text_of('install.sql'))
        p.wait_ready(timeout=10)                         # within the 4 s cap
        assert 'listener: the journal is readable now' in p.log()
    finally:
        p.stop()


def test_a_missing_grant_is_named(database):
    role = f'crm_rt_ro_{database.name[-8:]}'
    database.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        database.execute(f'GRANT USAGE ON SCHEMA crm_realtime TO "{role}"')   # but no SELECT
        env = sidecar_env(database, SIDECAR_DATABASE_URL=database.url.replace('postgres@', f'{role}@', 1))
        p = SidecarProcess(env).start(wait_ready=False)
        try:
            p.wait_ok('/healthz', what='up')
            deadline = time.time() + 10
            while 'retrying in' not in p.log() and time.time() < deadline:
                time.sleep(0.1)
            assert (f'database role "{role}" cannot read the journal (permission denied for table journal): '
                    f'as the DBA, run GRANT SELECT ON crm_realtime.journal, crm_realtime.journal_state, '
                    f'crm_realtime.watched_table, crm_realtime.mapping_status TO "{role}" '
                    f'(sql/README.md, step 4); retrying in') in p.log()
            database.execute(f'GRANT SELECT ON crm_realtime.journal, crm_realtime.journal_state, '
                             f'crm_realtime.watched_table, crm_realtime.mapping_status TO "{role}"')
            p.wait_ready(timeout=10)
        finally:
            p.stop()
    finally:
        database.execute(f'DROP OWNED BY "{role}"')
        database.execute(f'DROP ROLE "{role}"')


def test_above_the_notify_threshold_the_trigger_sends_no_wakeup(database):
    """crm_realtime.notify_max_queue_usage: pg_notification_queue_usage() at or above it
    skips the NOTIFY (a full queue would fail the CRM's commit). The watcher holds
    the lock an idle listener holds, so a write below the threshold does notify."""
    from sidecar.listener import LOCK_KEY
    with database.connect() as watcher, database.connect() as writer:
        watcher.execute('LISTEN crm_realtime')
        watcher.execute('SELECT pg_advisory_lock_shared(%s, %s)', LOCK_KEY)
        for value, notifies in (('0', False), ('1', True), ('0', False),
                                ('not a number', True), ('1.2.3', True), ('', True)):
            writer.execute(f"SET crm_realtime.notify_max_queue_usage = '{value}'")
            writer.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'x')")
            got = list(watcher.notifies(timeout=0.3, stop_after=1))
            assert bool(got) is notifies, value
    assert database.execute('SELECT count(*) FROM crm_realtime.journal') == [(6,)]


def test_no_wakeup_is_sent_when_no_listener_waits(database):
    """Nobody holds the idle listener's lock (no sidecar, or every one is reading
    anyway): the trigger sends no NOTIFY, so the commit does not queue behind
    NOTIFY's cluster-wide lock."""
    from sidecar.listener import LOCK_KEY
    with database.connect() as watcher, database.connect() as writer:
        watcher.execute('LISTEN crm_realtime')
        writer.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'x')")
        assert list(watcher.notifies(timeout=0.3, stop_after=1)) == []
        watcher.execute('SELECT pg_advisory_lock_shared(%s, %s)', LOCK_KEY)
        writer.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'y')")
        assert len(list(watcher.notifies(timeout=2, stop_after=1))) == 1


def test_a_concurrent_probe_is_not_taken_for_a_waiting_listener(database):
    """Another writer's probe holds the lock exclusively for an instant. A probe that
    fails on it must not notify: no listener can be waiting while it is held, and
    taking it for one made concurrent writers notify (and queue behind NOTIFY's
    commit lock) exactly when the CRM is busiest. Measured before the fix: 16
    writers waited on that lock ("Lock:object" in pg_stat_activity)."""
    from sidecar.listener import LOCK_KEY
    with database.connect() as watcher, database.connect() as prober, database.connect() as writer:
        watcher.execute('LISTEN crm_realtime')
        prober.execute('SELECT pg_advisory_lock(%s, %s)', LOCK_KEY)       # a probe, frozen mid-way
        for op in ("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'x')",
                   "UPDATE prospects SET status = 'contacted' WHERE firstname = 'x'",
                   "INSERT INTO notifications (organization_id, type) VALUES (1, 't')"):
            writer.execute(op)
        assert list(watcher.notifies(timeout=0.5, stop_after=1)) == []
        prober.execute('SELECT pg_advisory_unlock(%s, %s)', LOCK_KEY)
        # and the lock is free again for a listener: a waiting one is still woken
        watcher.execute('SELECT pg_advisory_lock_shared(%s, %s)', LOCK_KEY)
        writer.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, 'y')")
        assert len(list(watcher.notifies(timeout=2, stop_after=1))) == 1
    assert database.execute('SELECT count(*) FROM crm_realtime.journal') == [(4,)]


@pytest.mark.gen_test(timeout=60)
async def test_a_change_written_above_the_notify_threshold_still_arrives(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    c = await clients(sc.url, make_token(1, 11))
    with database.connect() as writer:
        writer.execute("SET crm_realtime.notify_max_queue_usage = '0'")
        for i in range(3):
            writer.execute("INSERT INTO prospects (organization_id, firstname) VALUES (1, %s)", [f'q{i}'])
            await asyncio.sleep(0.3)
    await c.wait_events(3, timeout=10)
    await asyncio.sleep(1.2)
    assert [e[1]['firstname'] for e in c.events] == ['q0', 'q1', 'q2']
