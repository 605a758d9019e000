"""An SPA written as the contract says, in Debian's chromium, reaching the sidecar two ways.

1. Same origin: Debian's haproxy with deploy/haproxy.cfg is the CRM's front
   door. The page, the CRM's API (``/auth/login``) and ``/socket.io/`` all
   come from the proxy's origin; the page runs the contract's login() and
   connectSocket(token) with the socket URL left to the default (the page's
   origin) and receives ``prospect:created`` for a row written to the
   database. The sidecars have no CORS setting, and a page from another
   origin is refused through the proxy on both transports.
2. Separate origin: the page comes from one port, the sidecar listens on
   another, ``VITE_SOCKET_URL`` points at it and ``SIDECAR_CORS_ORIGINS``
   names the page's origin: both transports connect. A page from an origin
   not in the list is refused on both, and the browser console says why.

The CRM's web server is a stand-in (tests/spa_page.py); everything else is real.
"""
import re
import time

import pytest

from conftest import make_token
from haproxy_rig import HAProxy, require_haproxy
from spa_page import CrmStandIn
from test_browser_demo import CHROMIUM, CHROMIUM_ARGS, _require_browser

pytestmark = pytest.mark.browser
TIMEOUT_MS = 15_000


@pytest.fixture
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_spa(browser):
    """Open the SPA at ``url``; the page records its console and JavaScript errors."""
    pages = []

    def open_(url):
        page = browser.new_context().new_page()
        page.console = []
        page.js_errors = []
        page.on('console', lambda msg: page.console.append(f'{msg.type}: {msg.text}'))
        page.on('pageerror', lambda exc: page.js_errors.append(str(exc)))
        page.goto(url)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        assert page.js_errors == []
        page.context.close()


def login(page):
    return page.evaluate("login('u11@one.example', 'secret').then(r => r.user.email)")


def wait_console(page, pattern, timeout=TIMEOUT_MS / 1000):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(re.search(pattern, line) for line in page.console):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f'nothing matching {pattern!r} in the console: {page.console}')


@pytest.fixture
def crm():
    stand_in = CrmStandIn(make_token(1, 11)).start()
    yield stand_in
    stand_in.stop()


def test_same_origin_through_haproxy_needs_no_cors(database, sidecar_process, crm, open_spa):
    from playwright.sync_api import expect
    require_haproxy()
    replicas = [sidecar_process(database), sidecar_process(database)]
    assert all('SIDECAR_CORS_ORIGINS' not in r.env for r in replicas)
    proxy = HAProxy([r.port for r in replicas], crm_port=crm.port).start()
    try:
        proxy.wait_states({'sidecar-1': 'UP', 'sidecar-2': 'UP'})
        proxy.wait_states({'crm-api': 'UP'}, backend='crm')
        pages = {}
        for transports in ('websocket,polling', 'polling', 'websocket'):
            suffix = '' if transports == 'websocket,polling' else f'?transports={transports}'
            page = open_spa(proxy.url + '/' + suffix)
            assert login(page) == 'u11@one.example'
            expect(page.locator('#state')).to_have_text(f'connecté {transports.split(",")[0]}',
                                                         timeout=TIMEOUT_MS)
            pages[transports] = page
        database.insert_prospect(1, firstname='Zoé', lastname='Fontaine')
        for page in pages.values():
            expect(page.locator('#prospects li')).to_have_text(['Zoé Fontaine'], timeout=TIMEOUT_MS)
            wait_console(page, r'^log: 🟢 Socket\.IO connecté: ')
            assert not [line for line in page.console if line.startswith('error')], page.console
        # the page, the login and the socket all went through the one origin
        assert ('GET', '/') in crm.requests and ('POST', '/auth/login') in crm.requests
        assert not [path for _, path in crm.requests if path.startswith('/socket.io/')]

        # behind the proxy, CORS is still the browser's Origin: a page from elsewhere is refused
        elsewhere = CrmStandIn(make_token(1, 11)).start()
        try:
            for transports, error, why in (
                    ('websocket', 'websocket error', 'Unexpected response code: 403'),
                    ('polling', 'xhr poll error', "No 'Access-Control-Allow-Origin' header is present")):
                page = open_spa(f'{elsewhere.url}/?socket={proxy.url}&transports={transports}')
                login(page)
                expect(page.locator('#state')).to_have_text(f'erreur: {error}', timeout=TIMEOUT_MS)
                wait_console(page, re.escape(why))
        finally:
            elsewhere.stop()
    finally:
        proxy.stop()
    log = proxy.log()
    assert re.search(r'crm crm/crm-api .*"POST /auth/login', log), log
    # each polling session's requests all went to the replica that made it (the
    # log names a session by a hash of its sid: the sid itself is not logged)
    assert 'sid=' not in log
    sessions = {}
    for server, session in re.findall(r' crm (sidecar/sidecar-\d) .*"(?:GET|POST) /socket\.io/ HTTP/1\.1" '
                                      r'session:(\d+)$', log, re.M):
        sessions.setdefault(session, []).append(server)
    assert sessions and max(len(s) for s in sessions.values()) >= 3, log
    assert all(len(set(servers)) == 1 for servers in sessions.values()), sessions


def test_separate_origin_with_cors_origins(database, sidecar_process, open_spa):
    from playwright.sync_api import expect
    listed, other = CrmStandIn(make_token(1, 11)).start(), CrmStandIn(make_token(1, 11)).start()
    try:
        sidecar = sidecar_process(database, SIDECAR_CORS_ORIGINS=listed.url)
        pages = []
        for transports in ('websocket', 'polling'):
            page = open_spa(f'{listed.url}/?socket={sidecar.url}&transports={transports}')
            login(page)
            expect(page.locator('#state')).to_have_text(f'connecté {transports}', timeout=TIMEOUT_MS)
            pages.append(page)
        database.insert_prospect(1, firstname='Marc', lastname='Azur')
        for page in pages:
            expect(page.locator('#prospects li')).to_have_text(['Marc Azur'], timeout=TIMEOUT_MS)

        # an origin that is not listed: refused on both transports, and the console says why
        ws = open_spa(f'{other.url}/?socket={sidecar.url}&transports=websocket')
        login(ws)
        expect(ws.locator('#state')).to_have_text('erreur: websocket error', timeout=TIMEOUT_MS)
        wait_console(ws, r"^error: WebSocket connection to 'ws://127\.0\.0\.1:\d+/socket\.io/.*' failed: "
                         r"Error during WebSocket handshake: Unexpected response code: 403")
        polling = open_spa(f'{other.url}/?socket={sidecar.url}&transports=polling')
        login(polling)
        expect(polling.locator('#state')).to_have_text('erreur: xhr poll error', timeout=TIMEOUT_MS)
        wait_console(polling, rf"^error: Access to XMLHttpRequest at '{re.escape(sidecar.url)}/socket\.io/.*' "
                              rf"from origin '{re.escape(other.url)}' has been blocked by CORS policy: "
                              r"No 'Access-Control-Allow-Origin' header is present")
        database.insert_prospect(1, firstname='Jamais', lastname='Reçu')
        expect(pages[0].locator('#prospects li')).to_have_count(2, timeout=TIMEOUT_MS)
        for page in (ws, polling):
            expect(page.locator('#prospects li')).to_have_count(0)
            page.js_errors = []
    finally:
        listed.stop()
        other.stop()
