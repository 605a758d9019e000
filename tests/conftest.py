"""Shared fixtures: a real PostgreSQL, real sidecars, real Socket.IO clients.

PostgreSQL: the server at 127.0.0.1:5432 (user postgres, trust auth) or, when
none answers, an embedded one started with ``pgserver``. Override with
``CRM_REALTIME_TEST_PG`` (an admin URL). Every test module gets databases of
its own, created from a template that already holds the reference CRM and
``sql/install.sql``.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import jwt
import psycopg
import pytest
import socketio

from sidecar.settings import load_settings
from sidecar.sqlfiles import sql_text

ROOT = Path(__file__).resolve().parent.parent
SECRET = 'test-secret-' + 'x' * 40
OUTPUT = Path(os.environ.get('CRM_REALTIME_TEST_OUTPUT', ROOT / 'test-output'))


# --------------------------------------------------------------------------- event loop

@pytest.fixture
def io_loop():
    """pytest-tornado's per-test IOLoop, closed only after its leftover tasks end.

    A test that fails half-way (or a client the server dropped) can leave
    engine.io read/write/ping tasks pending. Closing the loop under them makes
    Python print "Task was destroyed but it is pending!" at exit, after the
    pytest summary, which buries the summary in CI's log. Cancel and await them
    while the loop still runs.
    """
    import tornado.ioloop
    loop = tornado.ioloop.IOLoop()
    loop.make_current()
    yield loop
    aio = loop.asyncio_loop

    async def drain():
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        await aio.shutdown_asyncgens()

    try:
        loop.run_sync(drain, timeout=10)
    finally:
        loop.clear_current()
        loop.close(all_fds=True)


# --------------------------------------------------------------------------- PostgreSQL

def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute('SELECT 1')
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope='session')
def pg_admin_url():
    url = os.environ.get('CRM_REALTIME_TEST_PG', 'postgresql://postgres@127.0.0.1:5432/postgres')
    if _reachable(url):
        yield url
        return
    import pgserver  # embedded fallback for a laptop without PostgreSQL
    data = tempfile.mkdtemp(prefix='crm-realtime-test-pg-')
    server = pgserver.get_server(data, cleanup_mode='delete')
    yield server.get_uri('postgres')
    server.cleanup()


def _with_db(admin_url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info['dbname'] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def _url(conninfo: str) -> str:
    """A postgresql:// URL for SIDECAR_DATABASE_URL from any conninfo."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    from urllib.parse import quote
    host = info.get('host', '127.0.0.1')
    port = info.get('port', '5432')
    user = info.get('user', 'postgres')
    if host.startswith('/'):
        return f"postgresql://{quote(user)}@/{info['dbname']}?host={quote(host)}&port={port}"
    return f"postgresql://{quote(user)}@{host}:{port}/{info['dbname']}"


@pytest.fixture(scope='session')
def template_db(pg_admin_url):
    name = f'crm_rt_tpl_{os.getpid()}'
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(_with_db(pg_admin_url, name), autocommit=True) as conn:
        conn.execute(sql_text('examples/reference_crm.sql'))
        conn.execute(sql_text('install.sql'))
        conn.execute("INSERT INTO organizations VALUES (1, 'Org One'), (2, 'Org Two'), (7, 'Org Seven')")
        conn.execute("INSERT INTO users VALUES (11, 1, 'u11@one.example'), (12, 1, 'u12@one.example'), "
                     "(21, 2, 'u21@two.example'), (71, 7, 'u71@seven.example')")
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Database:
    """A fresh CRM database (reference schema + install.sql) for one test."""

    def __init__(self, admin_url: str, name: str):
        self.admin_url = admin_url
        self.name = name
        self.conninfo = _with_db(admin_url, name)
        self.url = _url(self.conninfo)

    def connect(self, **kw) -> psycopg.Connection:
        kw.setdefault('autocommit', True)
        return psycopg.connect(self.conninfo, **kw)

    def execute(self, sql, params=None):
        with self.connect() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def insert_prospect(self, organization_id=1, **fields) -> str:
        fields = {'firstname': 'Ada', 'lastname': 'Lovelace', 'email': 'ada@example.com',
                  'phone': '+33 1 23 45 67 89', 'status': 'new', 'source': 'website',
                  'notes': 'first contact', **fields}
        cols = ', '.join(['organization_id'] + list(fields))
        marks = ', '.join(['%s'] * (len(fields) + 1))
        rows = self.execute(f'INSERT INTO prospects ({cols}) VALUES ({marks}) RETURNING id',
                            [organization_id] + list(fields.values()))
        return str(rows[0][0])


def _scratch_database(admin_url: str, prefix: str, template: Optional[str] = None):
    """Create a uniquely named database, yield it, drop it."""
    name = f'{prefix}{uuid.uuid4().hex[:12]}'
    clause = f' TEMPLATE "{template}"' if template else ''
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    yield Database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database(pg_admin_url, template_db):
    """A fresh CRM database: the reference schema, install.sql and a few organizations/users."""
    yield from _scratch_database(pg_admin_url, 'crm_rt_', template_db)


@pytest.fixture
def empty_database(pg_admin_url):
    """A database with nothing in it (for install/uninstall tests)."""
    yield from _scratch_database(pg_admin_url, 'crm_rt_empty_')


def write_large_prospects(database: Database, count: int = 120, per_commit: int = 20) -> List[str]:
    """Insert ``count`` prospects p0..p<count-1> with 100 KB of notes each; return the notes."""
    notes = [f'{i:04d}' + 'n' * 99_996 for i in range(count)]
    with database.connect(autocommit=False) as conn:
        for i, text in enumerate(notes):
            conn.execute("INSERT INTO prospects (organization_id, firstname, notes) VALUES (1, %s, %s)",
                         [f'p{i}', text])
            if i % per_commit == per_commit - 1:
                conn.commit()
        conn.commit()
    return notes


def assert_large_prospects_received(events, notes: List[str]) -> None:
    """Every prospect of write_large_prospects, once, in order, whole (as the Node client's digest)."""
    import hashlib
    created = [e[1] for e in events if e[0] == 'prospect:created']
    assert [p['firstname'] for p in created] == [f'p{i}' for i in range(len(notes))]
    assert [p['notes'] for p in created] == [f'{len(n)}:{hashlib.sha1(n.encode()).hexdigest()}' for n in notes]


async def paused_reader(sc, node_clients):
    """An official client over websocket that has stopped reading its socket."""
    slow = await node_clients(sc.url, make_token(1, 11), transports=('websocket',), digest=True)
    await slow.wait_for(lambda n: n.of_type('connect'))
    await slow.send(cmd='pause')
    await asyncio.sleep(0.2)
    return slow


# --------------------------------------------------------------------------- tokens

def make_token(organization_id=1, user_id=11, *, secret=SECRET, algorithm='HS256',
               exp_in: float = 3600, **claims) -> str:
    body = {'sub': None if user_id is None else str(user_id), 'exp': int(time.time() + exp_in)}
    if organization_id is not None:
        body['organization_id'] = organization_id
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=algorithm)


# --------------------------------------------------------------------------- sidecars

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def sidecar_env(database: Database, **extra) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith('SIDECAR_')}
    env.update({
        'SIDECAR_DATABASE_URL': database.url,
        'SIDECAR_HOST': '127.0.0.1',
        'SIDECAR_PORT': '0',
        'SIDECAR_JWT_SECRET': SECRET,
        'SIDECAR_LISTENER_CHECK_SECONDS': '1',
        'SIDECAR_LISTENER_TIMEOUT_SECONDS': '2',
        'SIDECAR_LISTENER_MAX_BACKOFF_SECONDS': '1',
        'SIDECAR_LOG_LEVEL': 'INFO',
        # no load balancer to drain from: a test's SIGTERM stops at once
        'SIDECAR_DRAIN_SECONDS': '0',
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def make_sidecar(io_loop, clients):
    # depends on ``clients`` so that sidecars stop first: the server then
    # closes every socket, and a polling client is not left in a long poll.
    """Start in-process sidecars on the test's IOLoop: ``await make_sidecar(database, **env)``."""
    from sidecar.app import Sidecar
    started = []

    async def factory(database: Database, **extra):
        settings = load_settings(sidecar_env(database, **extra))
        sc = Sidecar(settings)
        await sc.start()
        started.append(sc)
        deadline = time.time() + 10
        while not sc.listener.ready and time.time() < deadline:
            await asyncio.sleep(0.05)
        assert sc.listener.ready, 'listener did not come up'
        sc.url = f'http://127.0.0.1:{sc.port}'
        return sc

    yield factory
    for sc in started:
        io_loop.run_sync(sc.stop, timeout=10)


class SidecarProcess:
    """``crm-realtime serve`` as a child process (restart and CLI tests)."""

    def __init__(self, env: Dict[str, str], port: Optional[int] = None):
        self.port = port or free_port()
        self.env = dict(env, SIDECAR_PORT=str(self.port))
        self.url = f'http://127.0.0.1:{self.port}'
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = Path(tempfile.mkstemp(prefix='sidecar-', suffix='.log')[1])

    def start(self, wait_ready=True, timeout=20):
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen([sys.executable, '-m', 'sidecar', 'serve'], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ok(self, path: str, timeout=20, what='ready'):
        """Poll ``GET path`` until it answers 200; fail with the process log if it never does."""
        import urllib.request
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f'sidecar exited with {self.proc.returncode}:\n{self.log()}')
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f'sidecar not {what} after {timeout}s:\n{self.log()}')

    def wait_ready(self, timeout=20):
        self.wait_ok('/readyz', timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, '_log', None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')


@pytest.fixture
def sidecar_process():
    procs: List[SidecarProcess] = []

    def factory(database: Database, port=None, **extra) -> SidecarProcess:
        p = SidecarProcess(sidecar_env(database, **extra), port=port)
        procs.append(p)
        return p.start()

    yield factory
    for p in procs:
        p.stop()


# --------------------------------------------------------------------------- clients

class _Waits:
    """``wait_for(predicate)`` over whatever a client has recorded so far."""
    timeout = 10.0

    def _finished(self) -> bool:
        return False

    async def wait_for(self, predicate, timeout=None):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0 or self._finished():
                raise AssertionError(f'{type(self).__name__}: timed out; saw {self.seen()!r}')
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return self

    async def wait_events(self, n, timeout=None):
        await self.wait_for(lambda c: len(c.events) >= n, timeout)
        return self.events


class Recorder(_Waits):
    """A python-socketio client that records every event it receives."""

    def __init__(self, transports=('websocket',)):
        self.client = socketio.AsyncClient(reconnection=False)
        self.transports = list(transports)
        self.events: List[tuple] = []
        self.connect_error = None
        self.disconnect_reasons: List[str] = []
        self._changed = asyncio.Event()

        @self.client.on('*')
        async def any_event(event, *args):
            self.events.append((event, *args))
            self._changed.set()

        @self.client.event
        async def connect_error(data):
            self.connect_error = data
            self._changed.set()

        @self.client.event
        async def disconnect(*reason):
            self.disconnect_reasons.append(reason[0] if reason else '')
            self._changed.set()

    async def connect(self, url, token=None, headers=None, expect_error=False):
        try:
            await self.client.connect(url, auth=None if token is None else {'token': token},
                                      headers=headers or {}, transports=self.transports,
                                      wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            if not expect_error:
                raise
        return self

    def seen(self):
        return self.events

    def named(self, name):
        return [e[1] for e in self.events if e[0] == name]

    async def close(self):
        if self.client.connected:
            await self.client.disconnect()


@pytest.fixture
def clients(io_loop):
    made: List[Recorder] = []

    async def factory(url, token=None, transports=('websocket',), **kw) -> Recorder:
        r = Recorder(transports)
        made.append(r)
        return await r.connect(url, token, **kw)

    yield factory
    async def close_all():
        await asyncio.wait([asyncio.ensure_future(r.close()) for r in made], timeout=5)

    if made:
        io_loop.run_sync(close_all, timeout=10)


# --------------------------------------------------------------------------- Node

NODE_DIR = ROOT / 'tests' / 'js'


def node_available() -> bool:
    return shutil.which('node') is not None and (NODE_DIR / 'node_modules' / 'socket.io-client').is_dir()


@pytest.fixture(scope='session')
def output_dir():
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


class NodeClient(_Waits):
    """The official socket.io-client under Node (tests/js/client.mjs), driven from a test."""
    timeout = 15.0

    def __init__(self, proc):
        self.proc = proc
        self.lines: List[dict] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, url, token=None, transports=('websocket', 'polling'), **config):
        import json
        cfg = {'url': url, 'token': token, 'transports': list(transports), **config}
        proc = await asyncio.create_subprocess_exec(
            'node', str(NODE_DIR / 'client.mjs'), cwd=str(NODE_DIR),
            env=dict(os.environ, CLIENT_CONFIG=json.dumps(cfg)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def _read(self):
        import json
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(json.loads(line))
            self._changed.set()
        self._changed.set()

    @property
    def events(self):
        return [(m['name'], *m['args']) for m in self.lines if m['type'] == 'event']

    def seen(self):
        return self.lines

    def _finished(self):
        return self._reader.done()

    def of_type(self, kind):
        return [m for m in self.lines if m['type'] == kind]

    async def send(self, **cmd):
        import json
        self.proc.stdin.write((json.dumps(cmd) + '\n').encode())
        await self.proc.stdin.drain()

    async def close(self):
        if self.proc.returncode is None:
            try:
                await self.send(cmd='exit')
                await asyncio.wait_for(self.proc.wait(), 5)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()


@pytest.fixture
def node_clients(io_loop):
    """``await node_clients(url, token, transports=(...))`` -> NodeClient (closed after the test)."""
    if not node_available():
        if os.environ.get('CI'):
            pytest.fail('node and tests/js/node_modules are required in CI (.ci/run installs them)')
        pytest.skip('node or tests/js/node_modules missing: run `npm ci --prefix tests/js`')
    made: List[NodeClient] = []

    async def factory(url, token=None, transports=('websocket', 'polling'), **config):
        c = await NodeClient.start(url, token, transports, **config)
        made.append(c)
        return c

    yield factory

    async def close_all():
        for c in made:
            await c.close()

    if made:
        io_loop.run_sync(close_all, timeout=20)


# --------------------------------------------------------------------------- Calendly

@pytest.fixture
def fake_calendly(io_loop):
    """A local fake of the Calendly API (tests/fake_calendly.py), serving on 127.0.0.1."""
    from fake_calendly import FakeCalendly
    fake = io_loop.run_sync(FakeCalendly().start)
    yield fake
    io_loop.run_sync(fake.stop)
