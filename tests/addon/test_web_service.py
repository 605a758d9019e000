"""The web-client connection logic (static/src/js/realtime_connection.js) under Node.

The real socket.io-client talks to a real sidecar; a small HTTP server stands
in for Odoo's ``/crm_realtime/token`` route and answers with the addon's own
``token_response``. What Odoo adds around it (its rpc and user services,
``loadJS``, the session) is not exercised here.
"""
import http.server
import json
import os
import queue
import shutil
import subprocess
import threading
import time

import pytest

from conftest import NODE_DIR, SECRET, node_available

from .support import ADDON, config, insert_lead, odoo_db, tokens  # noqa: F401 - odoo_db is a fixture

pytestmark = [pytest.mark.node,
              pytest.mark.skipif(not node_available(), reason='needs node and tests/js/node_modules (npm ci)')]

DRIVER = os.path.join(os.path.dirname(__file__), 'service_driver.mjs')


class TokenRoute:
    """Answers each POST with ``answers[i](call index)`` -- by default a fresh token for user 6, company 1."""

    def __init__(self, sidecar_url, lifetime, answers=None):
        self.config = config.RealtimeConfig(sidecar_url, SECRET, lifetime)
        self.answers = answers or {}
        self.calls = 0
        route = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get('Content-Length') or 0))
                answer = route.answers.get(route.calls, route.fresh)()
                route.calls += 1
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.server.server_port}/crm_realtime/token'
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fresh(self):
        return tokens.token_response(self.config, 6, 1)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Driver:
    def __init__(self, tmp_path, token_url, **extra_env):
        module = tmp_path / 'realtime_connection.mjs'
        shutil.copy(ADDON / 'static' / 'src' / 'js' / 'realtime_connection.js', module)
        env = dict(os.environ, CONNECTION_MODULE=str(module), SOCKET_IO_CLIENT_DIR=str(NODE_DIR),
                   TOKEN_URL=token_url, **{k: str(v) for k, v in extra_env.items()})
        self.proc = subprocess.Popen(['node', DRIVER], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({'type': 'stderr', 'text': line.rstrip()})

    def wait_for(self, predicate, timeout=15):
        deadline = time.time() + timeout
        while True:
            found = [m for m in self.seen if predicate(m)]
            if found:
                return found[0]
            remaining = deadline - time.time()
            if remaining <= 0:
                raise AssertionError(f'timed out; driver said: {self.seen!r}')
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                pass

    def of_type(self, kind):
        return [m for m in self.seen if m['type'] == kind]

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('exit\n')
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def run(tmp_path):
    made = []

    def factory(sidecar_url, lifetime=300, answers=None, **env):
        route = TokenRoute(sidecar_url, lifetime, answers)
        driver = Driver(tmp_path, route.url, **env)
        made.append((route, driver))
        return route, driver

    yield factory
    for route, driver in made:
        driver.stop()
        route.close()


def test_token_is_refreshed_before_expiry_and_the_socket_comes_back(odoo_db, sidecar_process, run):
    sc = sidecar_process(odoo_db)
    route, driver = run(sc.url, lifetime=5)
    driver.wait_for(lambda m: m['type'] == 'connect')
    first = driver.of_type('token')[0]

    insert_lead(odoo_db, 1, contact_name='Before expiry')
    driver.wait_for(lambda m: m['type'] == 'event' and m['payload']['lastname'] == 'Before expiry')

    # a second token is fetched ahead of the first one's expiry ...
    second = driver.wait_for(lambda m: m['type'] == 'token' and m['expires_at'] > first['expires_at'])
    assert second['at'] < first['expires_at']
    # ... the sidecar drops the socket when the first expires, and it is back at once
    dropped = driver.wait_for(lambda m: m['type'] == 'disconnect')
    assert dropped['reason'] == 'io server disconnect'
    back = driver.wait_for(lambda m: m['type'] == 'connect' and m['at'] > dropped['at'])
    assert back['at'] - dropped['at'] < 2

    insert_lead(odoo_db, 1, contact_name='After expiry')
    driver.wait_for(lambda m: m['type'] == 'event' and m['payload']['lastname'] == 'After expiry')
    assert driver.of_type('log') == []           # no refused token along the way
    assert 'refused socket' not in sc.log()


def test_a_refused_token_is_replaced_and_the_connection_retried(odoo_db, sidecar_process, run):
    sc = sidecar_process(odoo_db)
    foreign = config.RealtimeConfig(sc.url, 'not-the-sidecar-secret-' + 'z' * 32, 300)
    route, driver = run(sc.url, answers={0: lambda: tokens.token_response(foreign, 6, 1)})
    driver.wait_for(lambda m: m['type'] == 'connect')
    (warning,) = driver.of_type('log')
    assert 'invalid_signature' in warning['message']
    assert route.calls == 2
    insert_lead(odoo_db, 1, contact_name='After retry')
    driver.wait_for(lambda m: m['type'] == 'event' and m['payload']['lastname'] == 'After retry')


def test_disabled_route_leaves_the_client_offline(odoo_db, sidecar_process, run):
    sc = sidecar_process(odoo_db)
    route, driver = run(sc.url, answers={0: lambda: dict(tokens.DISABLED)})
    started = driver.wait_for(lambda m: m['type'] == 'started')
    assert started['started'] is False
    time.sleep(0.5)
    assert route.calls == 1 and driver.of_type('connect') == []


def test_a_failed_client_script_load_is_retried_under_a_url_of_its_own(odoo_db, sidecar_process, run):
    """Odoo's loadJS keeps a URL's rejected promise: each retry asks the sidecar for its own URL."""
    sc = sidecar_process(odoo_db)
    route, driver = run(sc.url, LOAD_FAILURES=2)
    driver.wait_for(lambda m: m['type'] == 'connect')
    loads = driver.of_type('load')
    assert [(m['attempt'], m['status']) for m in loads] == [(0, 'refused'), (1, 'refused'), (2, 200)]
    assert loads[2]['url'] == sc.url + '/client/socket.io.min.js?retry=2'
    warnings = [m['message'] for m in driver.of_type('log')]
    assert len(warnings) == 2 and all("cannot load the sidecar's client script" in w for w in warnings)
    assert route.calls == 1          # one token, fetched before the first load, was enough
    insert_lead(odoo_db, 1, contact_name='After the script came back')
    driver.wait_for(lambda m: m['type'] == 'event' and m['payload']['lastname'] == 'After the script came back')


def test_no_token_is_minted_while_there_is_no_socket(odoo_db, sidecar_process, run):
    """The client script never loads: the page keeps retrying it but mints no further token."""
    sc = sidecar_process(odoo_db)
    route, driver = run(sc.url, lifetime=2, LOAD_FAILURES=10 ** 6, MAX_RETRY_DELAY=300)
    time.sleep(4.5)                  # more than two token lifetimes
    driver.wait_for(lambda m: m['type'] == 'load' and m['attempt'] >= 5)
    assert route.calls == 1
    assert driver.of_type('connect') == [] and driver.of_type('started') == []
    assert not [m for m in driver.of_type('log') if 'start failed' in m['message']]
