"""The demo page in a real browser: Debian's chromium driven by Playwright.

``crm-realtime demo`` runs as a child process on a fresh test database (no
SIDECAR_JWT_SECRET: like a newcomer's demo it makes up a secret at each start).
Pages log in as users 1 and 2 of organization 1 and user 3 of organization 2,
through the demo's own session endpoint, and everything is asserted on what
the pages show. Each step leaves screenshots in ``test-output/browser/<test>/``.

Without playwright or /usr/bin/chromium these tests skip, except in CI (CI set),
where they fail: ``.ci/run`` installs chromium and ``./dev test`` installs playwright.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SidecarProcess, sidecar_env
from sidecar.client_bundle import find_client_dist

pytestmark = pytest.mark.browser

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
PROPAGATION_MS = 2_000     # a change made in one page shows up in another within this
START_MS = 30_000          # page load, first connection, reconnection after a restart


def _require_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append('the playwright package (pip install -e .[test])')
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f'{CHROMIUM} (apt-get install chromium)')
    if find_client_dist() is None:
        missing.append('socket.io-client (npm ci --prefix tests/js)')
    if missing:
        message = 'browser tests need ' + ', '.join(missing)
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)


class DemoProcess(SidecarProcess):
    """``python -m sidecar demo`` as a child process; restartable on the same port."""

    def start(self, wait_ready=True, timeout=60):
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen([sys.executable, '-m', 'sidecar', 'demo'], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        if wait_ready:
            self.wait_ready(timeout)
            self._wait_page(timeout)
        return self

    def _wait_page(self, timeout):
        self.wait_ok('/demo/api/session?user=1', timeout, what='serving the demo page')


@pytest.fixture
def demo(database):
    from sidecar.demo.demo import DEMO_MARK
    database.execute(f'CREATE TABLE "{DEMO_MARK}" ()')     # a scratch database, given to the demo
    env = sidecar_env(database, SIDECAR_CALENDLY_POLL_SECONDS=5)   # first poll 5 s after start
    env.pop('SIDECAR_JWT_SECRET')
    process = DemoProcess(env)
    yield process.start()
    process.stop()
    assert 'Traceback' not in process.log(), process.log()


@pytest.fixture
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(output_dir, request):
    """``shots('step', alice=page, ...)`` saves ``NN-step-alice.png`` for each page."""
    folder = output_dir / 'browser' / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    count = [0]

    def take(step, **pages):
        count[0] += 1
        for who, page in pages.items():
            page.screenshot(path=str(folder / f'{count[0]:02d}-{step}-{who}.png'))
    return take


@pytest.fixture
def open_page(browser, demo):
    """Open the demo page for a user; every page must end without a JavaScript error."""
    from playwright.sync_api import expect
    pages = []

    def open_(user, query='', connected=True, viewport=None, **context_options):
        context = browser.new_context(viewport=viewport or {'width': 1280, 'height': 860}, locale='fr-FR',
                                      timezone_id='Europe/Paris', **context_options)
        page = context.new_page()
        page.js_errors = []
        page.on('pageerror', lambda exc: page.js_errors.append(str(exc)))
        pages.append(page)
        page.goto(f'{demo.url}/demo/?user={user}{query}')
        if connected:
            expect(page.locator('#connection')).to_have_text('Connecté', timeout=START_MS)
        return page

    yield open_
    for page in pages:
        assert page.js_errors == []
        page.context.close()


# --------------------------------------------------------------------------- helpers

def rows(page, text=None):
    locator = page.locator('#prospects tr.prospect')
    return locator if text is None else locator.filter(has_text=text)


def names(page):
    return sorted(page.locator('#prospects tr.prospect td.name strong').all_inner_texts())


def wait_names(page, expected, timeout_ms=START_MS):
    """Bounded polling until the page lists exactly ``expected`` (any order)."""
    deadline = time.time() + timeout_ms / 1000
    while names(page) != sorted(expected):
        if time.time() > deadline:
            raise AssertionError(f'page lists {names(page)}, expected {sorted(expected)}')
        page.wait_for_timeout(100)


def fill_prospect(page, **fields):
    form = page.locator('#prospect-form')
    for name, value in fields.items():
        field = form.locator(f'[name={name}]')
        if name == 'status':
            field.select_option(value)
        else:
            field.fill(value)


def db_names(database, organization_id):
    return sorted(f'{f} {l}' for f, l in database.execute(
        'SELECT firstname, lastname FROM prospects WHERE organization_id = %s', (organization_id,)))


# --------------------------------------------------------------------------- tests

def test_create_edit_delete_reach_the_other_user_and_never_the_other_organization(
        open_page, shots, database):
    from playwright.sync_api import expect
    alice, bruno, chloe = open_page(1), open_page(2), open_page(3)
    wait_names(alice, ['Camille Martin', 'Léa Bernard'])
    wait_names(bruno, ['Camille Martin', 'Léa Bernard'])
    wait_names(chloe, ['Hugo Petit'])
    expect(alice.locator('#identity')).to_contain_text('alice@lumiere.example')
    expect(chloe.locator('#identity')).to_contain_text('organisation 2')
    shots('connected', alice=alice, bruno=bruno, chloe=chloe)

    fill_prospect(alice, firstname='Zoé', lastname='Fontaine', email='zoe.fontaine@example.com',
                  phone='+33 6 01 02 03 04', notes='Robe de cérémonie, essayage en mai')
    alice.get_by_role('button', name='Créer').click()
    expect(rows(bruno, 'Zoé Fontaine')).to_have_count(1, timeout=PROPAGATION_MS)
    expect(bruno.locator('.toast', has_text='Nouveau prospect')).to_contain_text(
        'Zoé Fontaine a été ajouté', timeout=PROPAGATION_MS)
    expect(rows(alice, 'Zoé Fontaine')).to_have_count(1, timeout=PROPAGATION_MS)
    shots('created', alice=alice, bruno=bruno, chloe=chloe)

    rows(bruno, 'Zoé Fontaine').get_by_role('button', name='Modifier').click()
    fill_prospect(bruno, status='qualified', phone='+33 6 99 88 77 66')
    bruno.get_by_role('button', name='Enregistrer').click()
    zoe_for_alice = rows(alice, 'Zoé Fontaine')
    expect(zoe_for_alice.locator('.status')).to_have_text('qualified', timeout=PROPAGATION_MS)
    expect(zoe_for_alice).to_contain_text('+33 6 99 88 77 66')
    shots('edited', alice=alice, bruno=bruno, chloe=chloe)

    rows(alice, 'Zoé Fontaine').get_by_role('button', name='Supprimer').click()
    expect(rows(bruno, 'Zoé Fontaine')).to_have_count(0, timeout=PROPAGATION_MS)
    expect(rows(alice, 'Zoé Fontaine')).to_have_count(0, timeout=PROPAGATION_MS)
    wait_names(bruno, ['Camille Martin', 'Léa Bernard'], PROPAGATION_MS)
    shots('deleted', alice=alice, bruno=bruno, chloe=chloe)

    # organization 2 saw none of it: not in its list, no event, no toast ...
    assert names(chloe) == ['Hugo Petit']
    expect(chloe.locator('#events li', has_text='prospect:')).to_have_count(0)
    expect(chloe.locator('.toast')).to_have_count(0)
    # ... while its page is live: its own change arrives, and only there
    fill_prospect(chloe, firstname='Marc', lastname='Azur')
    chloe.get_by_role('button', name='Créer').click()
    expect(rows(chloe, 'Marc Azur')).to_have_count(1, timeout=PROPAGATION_MS)
    expect(alice.locator('#events li', has_text='prospect:created')).to_have_count(1)  # Zoé's only
    assert 'Marc Azur' not in names(alice) + names(bruno)
    assert db_names(database, 1) == names(alice) == names(bruno)
    shots('other-organization', alice=alice, chloe=chloe)


def test_simulated_calendly_booking_goes_through_the_webhook_and_shows_prospect_and_toast(
        open_page, shots, database):
    from playwright.sync_api import expect
    alice, bruno, chloe = open_page(1), open_page(2), open_page(3)
    wait_names(bruno, ['Camille Martin', 'Léa Bernard'])
    expect(chloe.locator('#calendly-message')).to_contain_text('Pas de connexion Calendly')
    expect(chloe.get_by_role('button', name='Simuler la réservation')).to_be_disabled()

    form = alice.locator('#calendly-form')
    form.locator('[name=first_name]').fill('Dana')
    form.locator('[name=last_name]').fill('Reyes')
    form.locator('[name=email]').fill('Dana.Reyes@Example.com')
    form.locator('[name=phone]').fill('+33 6 11 22 33 44')
    alice.get_by_role('button', name='Simuler la réservation').click()
    expect(alice.locator('#calendly-message')).to_have_text('Webhook Calendly : 200 prospect_created',
                                                            timeout=PROPAGATION_MS)

    dana = rows(bruno, 'Dana Reyes')
    expect(dana).to_have_count(1, timeout=PROPAGATION_MS)
    expect(dana.locator('td.source')).to_have_text('calendly')
    expect(dana).to_contain_text('dana.reyes@example.com')
    expect(dana.locator('.notes')).to_contain_text('[Calendly] Rendez-vous « Premier essayage »')
    toast = bruno.locator('.toast', has_text='Nouveau prospect Calendly')
    expect(toast).to_contain_text('Dana Reyes a réservé « Premier essayage »', timeout=PROPAGATION_MS)
    expect(toast.get_by_role('button', name='Voir le prospect')).to_be_visible()
    expect(bruno.locator('#unseen-count')).to_have_text('1')
    expect(rows(alice, 'Dana Reyes')).to_have_count(1, timeout=PROPAGATION_MS)
    shots('new-prospect', alice=alice, bruno=bruno, chloe=chloe)
    # the real path: the signed webhook was accepted and recorded the booking
    assert database.execute("SELECT via, outcome FROM crm_realtime.calendly_booking") == [
        ('webhook', 'prospect_created')]

    # a second booking by a known Calendly prospect: prospect:updated with source calendly
    rows(bruno, 'Léa Bernard').get_by_role('button', name='RDV Calendly').click()
    for page in (alice, bruno):
        expect(page.locator('.toast', has_text='Nouveau rendez-vous')).to_contain_text(
            'Léa Bernard a pris un nouveau rendez-vous', timeout=PROPAGATION_MS)
        expect(rows(page, 'Léa Bernard').locator('.notes')).to_contain_text('[Calendly] Rendez-vous')
    expect(bruno.locator('#unseen-count')).to_have_text('2')
    shots('new-appointment', alice=alice, bruno=bruno, chloe=chloe)

    assert names(chloe) == ['Hugo Petit']
    expect(chloe.locator('#events li')).to_have_count(1)      # its own "connect" only
    expect(chloe.locator('.toast')).to_have_count(0)
    expect(chloe.locator('#unseen-count')).to_have_text('0')


PHONE = {'width': 390, 'height': 844}


def test_demo_page_on_a_phone_reflows_and_toasts_leave_the_buttons_free(open_page, shots):
    """Issue 12 item 9: at 390 px the page was 612 px wide, cells wrapped a letter per line,
    and toasts covered the first row's buttons."""
    from playwright.sync_api import expect
    phone = open_page(1, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    desk = open_page(2)
    wait_names(phone, ['Camille Martin', 'Léa Bernard'])

    assert phone.evaluate('document.documentElement.scrollWidth') <= PHONE['width']
    for name in phone.locator('#prospects tr.prospect td.name strong').all():
        box = name.bounding_box()
        assert box['width'] > 80 and box['height'] < 40, box      # a name on one line, not a letter per line
    # a Calendly booking made elsewhere raises a toast on the phone
    rows(desk, 'Léa Bernard').get_by_role('button', name='RDV Calendly').click()
    toast = phone.locator('.toast', has_text='Nouveau rendez-vous')
    expect(toast).to_be_visible(timeout=PROPAGATION_MS)
    toast_box = toast.bounding_box()
    assert toast_box['x'] >= 0 and toast_box['x'] + toast_box['width'] <= PHONE['width']
    first = rows(phone).first
    first.scroll_into_view_if_needed()
    for button in first.locator('td.row-actions button').all():
        box = button.bounding_box()
        hit = phone.evaluate('([x, y]) => document.elementFromPoint(x, y) === null ? null : '
                             'document.elementFromPoint(x, y).textContent',
                             [box['x'] + box['width'] / 2, box['y'] + box['height'] / 2])
        assert hit == button.text_content(), f'{button.text_content()!r} is covered by {hit!r}'
    shots('phone-390px-list', phone=phone)
    phone.evaluate('window.scrollTo(0, 0)')
    shots('phone-390px-top', phone=phone)


def test_after_the_sidecar_restarts_the_list_is_right_again(open_page, shots, demo, database):
    from playwright.sync_api import expect
    alice, chloe = open_page(1), open_page(3)
    wait_names(alice, ['Camille Martin', 'Léa Bernard'])
    wait_names(chloe, ['Hugo Petit'])

    synced = alice.locator('#sync').inner_text()
    demo.stop()
    expect(alice.locator('#connection')).to_contain_text('Déconnecté', timeout=START_MS)
    # the CRM keeps writing while the sidecar is away
    database.execute("INSERT INTO prospects (organization_id, firstname, lastname, status) "
                     "VALUES (1, 'Paul', 'Durand', 'new'), (2, 'Nina', 'Roux', 'new')")
    database.execute("DELETE FROM prospects WHERE firstname = 'Camille'")
    database.execute("UPDATE prospects SET status = 'won' WHERE firstname = 'Léa'")
    shots('sidecar-stopped', alice=alice, chloe=chloe)
    assert names(alice) == ['Camille Martin', 'Léa Bernard']     # nothing could tell the page

    demo.start()
    expect(alice.locator('#connection')).to_have_text('Connecté', timeout=START_MS)
    expect(chloe.locator('#connection')).to_have_text('Connecté', timeout=START_MS)
    wait_names(alice, ['Léa Bernard', 'Paul Durand'], PROPAGATION_MS)
    wait_names(chloe, ['Hugo Petit', 'Nina Roux'], PROPAGATION_MS)
    expect(rows(alice, 'Léa Bernard').locator('.status')).to_have_text('won')
    assert names(alice) == db_names(database, 1)
    # it refetched on "connect", as the contract's SPA does (whether or not the session was recovered)
    expect(alice.locator('#sync')).to_contain_text('après connexion')
    expect(alice.locator('#sync')).not_to_have_text(synced)
    # the restarted demo signs with a new secret: the page was refused, took a new token, came back
    expect(alice.locator('#events')).to_contain_text('invalid_signature')
    expect(alice.locator('#events')).to_contain_text('nouveau jeton obtenu')
    shots('sidecar-restarted', alice=alice, chloe=chloe)

    database.execute("INSERT INTO prospects (organization_id, firstname, lastname) VALUES (1, 'Live', 'Again')")
    expect(rows(alice, 'Live Again')).to_have_count(1, timeout=PROPAGATION_MS)
    assert 'Live Again' not in names(chloe)


def test_expired_token_is_renewed_and_the_page_reconnects(open_page, shots, database):
    from playwright.sync_api import expect
    bruno = open_page(2, '&ttl=5')
    events = bruno.locator('#events')
    expect(events).to_contain_text('io server disconnect', timeout=15_000)
    expect(events).to_contain_text('nouveau jeton obtenu', timeout=5_000)
    expect(bruno.locator('#connection')).to_have_text('Connecté', timeout=5_000)
    database.execute("INSERT INTO prospects (organization_id, firstname, lastname) VALUES (1, 'Fresh', 'Token')")
    expect(rows(bruno, 'Fresh Token')).to_have_count(1, timeout=PROPAGATION_MS)
    shots('token-renewed', bruno=bruno)


def test_page_says_how_to_install_the_client_when_it_is_missing(shots, browser, demo):
    from playwright.sync_api import expect
    context = browser.new_context(viewport={'width': 1280, 'height': 500})
    page = context.new_page()
    # answered as the demo answers when no socket.io-client is installed
    page.route('**/demo/vendor/socket.io.min.js', lambda route: route.fulfill(
        status=404, content_type='text/plain', body='socket.io-client is not installed'))
    page.goto(f'{demo.url}/demo/?user=1')
    expect(page.locator('#fatal')).to_contain_text('npm ci --prefix tests/js')
    expect(page.locator('#connection')).to_have_text('Client socket.io absent')
    shots('client-missing', page=page)
    context.close()


def test_demo_calendly_connection_is_polled_offline_without_error(demo, database):
    """The demo's connection has no Calendly account: its polls reach the demo's stand-in."""
    deadline = time.time() + 20
    while time.time() < deadline:
        polled = database.execute('SELECT organization_id, status, last_error FROM crm_realtime.calendly_connection '
                                  'WHERE last_poll_at IS NOT NULL')
        if polled:
            break
        time.sleep(0.2)
    assert polled == [('1', 'active', None)], demo.log()
    assert 'polled 0 events' in demo.log()
