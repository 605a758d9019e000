"""Off the happy path (issue 12): what an operator meets when something is not set up yet.

Each test runs the real ``crm-realtime`` command (``python -m sidecar``) as a
child process against the real PostgreSQL, and checks its exit status, the
exact text it prints, and that no traceback reaches the operator.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest

from conftest import ROOT, SidecarProcess, _url, _with_db, free_port, sidecar_env
from sidecar import __version__

PLACEHOLDER = 'change-me-to-the-crm-signing-secret-at-least-32-bytes'


def base_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith('SIDECAR_')}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def crm_realtime(*args, env, timeout=60, cwd=ROOT, python=sys.executable):
    result = subprocess.run([python, '-m', 'sidecar', *args], env=env, cwd=str(cwd),
                            capture_output=True, text=True, timeout=timeout)
    assert 'Traceback' not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


@pytest.fixture
def role(pg_admin_url):
    """A LOGIN role of its own (roles are cluster-wide: dropped after the test)."""
    name = f'crm_rt_role_{uuid.uuid4().hex[:10]}'
    databases = []
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')

    def grant(database, sql):
        databases.append(database)
        with database.connect() as conn:
            conn.execute(sql.replace('ROLE', f'"{name}"'))

    yield name, grant
    for database in databases:
        with database.connect() as conn:
            conn.execute(f'DROP OWNED BY "{name}"')
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{name}"')


def as_role(database, role_name):
    info = psycopg.conninfo.conninfo_to_dict(database.conninfo)
    info['user'] = role_name
    return _url(psycopg.conninfo.make_conninfo(**info))


# --------------------------------------------------------------------------- item 4: port in use

def test_port_in_use_is_one_sentence_and_exit_2_for_serve_and_demo(database):
    holder = socket.socket()
    holder.bind(('127.0.0.1', 0))
    holder.listen()
    port = holder.getsockname()[1]
    expected = (f'crm-realtime: port {port} on 127.0.0.1 is already in use; stop what listens there '
                f'or choose another port with SIDECAR_PORT.\n')
    try:
        serve = crm_realtime('serve', env=sidecar_env(database, SIDECAR_PORT=port))
        assert (serve.returncode, serve.stdout, serve.stderr) == (2, '', expected)
        # the demo checks it before starting PostgreSQL or loading anything
        started = time.monotonic()
        demo = crm_realtime('demo', env=base_env(SIDECAR_PORT=port))
        assert (demo.returncode, demo.stdout, demo.stderr) == (2, '', expected)
        assert time.monotonic() - started < 10
    finally:
        holder.close()


# --------------------------------------------------------------------------- item 3: install-sql

def test_install_and_uninstall_sql_need_only_the_database_url(empty_database):
    env = base_env(SIDECAR_DATABASE_URL=empty_database.url)      # no JWT secret
    install = crm_realtime('install-sql', env=env)
    assert (install.returncode, install.stdout, install.stderr) == (0, 'applied install.sql\n', '')
    assert empty_database.execute("SELECT to_regclass('crm_realtime.journal') IS NOT NULL") == [(True,)]
    uninstall = crm_realtime('uninstall-sql', env=env)
    assert (uninstall.returncode, uninstall.stdout, uninstall.stderr) == (0, 'applied uninstall.sql\n', '')


def test_install_sql_database_errors_are_one_sentence_and_exit_1(pg_admin_url, empty_database, role):
    missing = f'crm_rt_missing_{uuid.uuid4().hex[:8]}'
    result = crm_realtime('install-sql', env=base_env(
        SIDECAR_DATABASE_URL=_url(_with_db(pg_admin_url, missing))))
    assert result.returncode == 1 and result.stdout == ''
    assert re.fullmatch(rf'crm-realtime: install\.sql was not applied: connection failed: .*'
                        rf'database "{missing}" does not exist\.\n', result.stderr), result.stderr
    assert result.stderr.count('\n') == 1

    role_name, _ = role     # may log in, may not create a schema in that database
    result = crm_realtime('install-sql', env=base_env(SIDECAR_DATABASE_URL=as_role(empty_database, role_name)))
    assert (result.returncode, result.stdout, result.stderr) == (
        1, '', f'crm-realtime: install.sql was not applied: permission denied for database '
               f'{empty_database.name}.\n')


# --------------------------------------------------------------------------- item 7: placeholders

def test_the_example_files_placeholder_secrets_are_refused(database):
    example = (ROOT / '.env.example').read_text()
    assert f'SIDECAR_JWT_SECRET={PLACEHOLDER}\n' in example
    result = crm_realtime('serve', env=sidecar_env(database, SIDECAR_JWT_SECRET=PLACEHOLDER))
    assert (result.returncode, result.stdout, result.stderr) == (
        2, '', 'crm-realtime: configuration error: SIDECAR_JWT_SECRET is still the example\'s "change me" '
               'placeholder (expected the secret the CRM signs its HS* tokens with).\n')
    result = crm_realtime('serve', env=sidecar_env(
        database, SIDECAR_CALENDLY_ENCRYPTION_KEY='CHANGE_ME_' + 'x' * 40))
    assert (result.returncode, result.stderr) == (
        2, 'crm-realtime: configuration error: SIDECAR_CALENDLY_ENCRYPTION_KEY is still the example\'s '
           '"change me" placeholder (expected at least 32 characters of random key material).\n')


# --------------------------------------------------------------------------- item 8: small things

def test_version_and_help():
    result = crm_realtime('--version', env=base_env())
    assert (result.returncode, result.stdout, result.stderr) == (0, f'crm-realtime {__version__}\n', '')
    for args in (['--help'], ['calendly', '--help'], ['client-bundle', '--help'], ['demo', '--help']):
        result = crm_realtime(*args, env=base_env())
        assert result.returncode == 0 and '``' not in result.stdout, result.stdout
    assert '--data-dir' in crm_realtime('demo', '--help', env=base_env()).stdout


# --------------------------------------------------------------------------- item 1: Calendly is optional

REALTIME_GRANTS = '''
    GRANT USAGE ON SCHEMA crm_realtime TO ROLE;
    GRANT SELECT ON crm_realtime.journal, crm_realtime.journal_state, crm_realtime.watched_table,
                    crm_realtime.mapping_status TO ROLE;
    GRANT EXECUTE ON FUNCTION crm_realtime.prune(interval), crm_realtime.expand(text, jsonb) TO ROLE;
'''


def problems(log: str):
    """Lines an operator would take for trouble: warnings, errors, tracebacks, scheduler chatter."""
    return [line for line in log.splitlines()
            if (re.search(r' (WARNING|ERROR|CRITICAL) |Traceback', line) and 'tornado.access' not in line)
            or 'apscheduler' in line]


def test_without_calendly_grants_the_sidecar_says_once_that_calendly_is_off(database, role):
    role_name, grant = role
    grant(database, REALTIME_GRANTS)       # sql/README.md step 4 without its Calendly lines
    env = sidecar_env(database, SIDECAR_DATABASE_URL=as_role(database, role_name),
                      SIDECAR_CALENDLY_POLL_SECONDS=5, SIDECAR_CALENDLY_FIRST_POLL_SECONDS=5)
    process = SidecarProcess(env).start()
    try:
        time.sleep(7)                      # past the start-up check and the first scheduled poll (5 s)
    finally:
        process.stop()
    log = process.log()
    assert problems(log) == [], log
    off = [line for line in log.splitlines() if 'crm_realtime.calendly:' in line]
    assert len(off) == 1, log
    assert off[0].endswith(' INFO crm_realtime.calendly: calendly: off (this database role may not read '
                           'crm_realtime.calendly_connection); to turn it on, give the role the Calendly '
                           'grants of sql/README.md and run `crm-realtime calendly connect`'), off


def test_without_a_calendly_connection_the_sidecar_says_so_and_polls_nothing(database):
    process = SidecarProcess(sidecar_env(database, SIDECAR_CALENDLY_POLL_SECONDS=5,
                                         SIDECAR_CALENDLY_FIRST_POLL_SECONDS=5)).start()
    try:
        time.sleep(6.5)
    finally:
        process.stop()
    log = process.log()
    assert problems(log) == [], log
    lines = [line for line in log.splitlines() if 'calendly' in line]
    assert len(lines) == 1 and lines[0].endswith(
        ' INFO crm_realtime.calendly: calendly: off (no Calendly connection yet); '
        '`crm-realtime calendly connect` turns it on'), log


# --------------------------------------------------------------------------- item 5: the demo's database

def _demo_env(port):
    # pgserver runs PostgreSQL as a user it creates when started as root (useradd is in sbin)
    return base_env(SIDECAR_PORT=port, PATH=os.environ.get('PATH', '') + ':/usr/sbin:/sbin')


def test_demo_prints_a_psql_command_for_its_database_and_removes_it_at_ctrl_c(tmp_path):
    port = free_port()
    log_path = tmp_path / 'demo.log'
    with open(log_path, 'wb') as log:
        proc = subprocess.Popen([sys.executable, '-m', 'sidecar', 'demo'], env=_demo_env(port),
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    try:
        deadline = time.time() + 60
        while 'Ctrl-C stops it.' not in log_path.read_text() and time.time() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        out = log_path.read_text()
        match = re.search(r"^  psql '(postgresql://[^']+)'$", out, re.M)
        assert match, out
        url = match.group(1)
        data_dir = Path(re.search(r'host=([^&]+)', url).group(1))
        assert data_dir.name.startswith('crm-realtime-demo-') and data_dir.is_dir()
        assert 'The embedded database is deleted when the demo stops (--data-dir DIR keeps it).' in out
        with psycopg.connect(url, autocommit=True) as conn:       # the printed command's URL works
            assert conn.execute('SELECT count(*) FROM prospects').fetchone() == (3,)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    out = log_path.read_text()
    assert 'Traceback' not in out and ' WARNING ' not in out and ' ERROR ' not in out, out
    assert not data_dir.exists()


def test_demo_data_dir_is_kept_and_reused(tmp_path):
    data_dir = tmp_path / 'pg'
    for run in range(2):
        result = crm_realtime('demo', '--no-serve', '--data-dir', str(data_dir), env=_demo_env(free_port()),
                              timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (data_dir / 'PG_VERSION').is_file()
        match = re.search(r"^  psql '(postgresql://[^']+)'$", result.stdout, re.M)
        assert match and 'deleted when the demo stops' not in result.stdout, result.stdout


# --------------------------------------------------------------------------- item 6: the client bundle

@pytest.fixture(scope='module')
def installed_without_checkout(tmp_path_factory):
    """A virtualenv where crm-realtime is installed from its wheel, with no checkout in sight.

    Its dependencies come from the test virtualenv (a .pth line); the package
    itself is the built wheel, unpacked as pip would. Run from a directory
    that holds no node_modules.
    """
    if shutil.which('npm') is None:
        pytest.skip('npm is not installed')
    root = tmp_path_factory.mktemp('installed')
    # a clean copy of the sources: setuptools would reuse a checkout's stale build/ directory
    source = root / 'source'
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'build', 'node_modules', 'test-output', '*.egg-info', '__pycache__'))
    wheels = root / 'wheels'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q',
                    '-w', str(wheels), str(source)], check=True, capture_output=True, timeout=180)
    (wheel,) = wheels.glob('crm_realtime-*.whl')
    venv = root / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=60)
    python = venv / 'bin' / 'python'
    site = Path(subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               check=True, capture_output=True, text=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    deps = subprocess.run([sys.executable, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          check=True, capture_output=True, text=True).stdout.strip()
    (site / 'test-deps.pth').write_text(deps + '\n')
    where = subprocess.run([str(python), '-c', 'import sidecar; print(sidecar.__file__)'], cwd=str(root),
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site)), where
    return python, root


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_client_bundle_install_makes_an_installed_sidecar_serve_the_official_client(
        installed_without_checkout, database):
    python, cwd = installed_without_checkout
    env = sidecar_env(database)

    def serve_and_get():
        port = free_port()
        log_path = cwd / f'serve-{port}.log'
        with open(log_path, 'wb') as log:
            proc = subprocess.Popen([str(python), '-m', 'sidecar', 'serve'], env=dict(env, SIDECAR_PORT=str(port)),
                                    cwd=str(cwd), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 20
            while time.time() < deadline and proc.poll() is None:
                try:
                    return _get(f'http://127.0.0.1:{port}/client/socket.io.min.js')
                except OSError:
                    time.sleep(0.1)
            raise AssertionError(f'the installed sidecar did not answer:\n{log_path.read_text()}')
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:   # never leave a server behind
                proc.kill()
                proc.wait(5)

    status = crm_realtime('client-bundle', 'status', env=env, cwd=cwd, python=python)
    assert (status.returncode, status.stdout, status.stderr) == (
        1, '', 'crm-realtime: socket.io-client is not installed: run `crm-realtime client-bundle install` '
               '(or, in a checkout, `npm ci --prefix tests/js`).\n')
    assert serve_and_get() == (404, b'socket.io-client is not installed: run `crm-realtime client-bundle '
                                    b'install` (or, in a checkout, `npm ci --prefix tests/js`).\n')

    install = crm_realtime('client-bundle', 'install', env=env, cwd=cwd, python=python, timeout=180)
    home = python.parent.parent / 'share' / 'crm-realtime' / 'socket.io-client'
    assert install.returncode == 0, install.stderr
    assert re.fullmatch(rf'installed socket\.io-client 4\.\d+\.\d+ in {re.escape(str(home))}; the sidecar '
                        rf'serves it at /client/socket\.io\.min\.js \(restart a running sidecar\)\.\n',
                        install.stdout), install.stdout
    code, body = serve_and_get()
    assert code == 200 and body == (home / 'dist' / 'socket.io.min.js').read_bytes()
    assert b'socket.io' in body[:2000].lower()
    status = crm_realtime('client-bundle', 'status', env=env, cwd=cwd, python=python)
    assert status.returncode == 0 and status.stdout.startswith('socket.io-client 4.')
    assert sorted(p.name for p in home.iterdir()) == ['dist', 'package.json']   # npm's scratch is gone


def test_demo_refuses_a_database_that_is_not_its_own(database, empty_database):
    """A SIDECAR_DATABASE_URL left exported from a real set-up never gets demo rows."""
    users = database.execute('SELECT count(*) FROM users')
    result = crm_realtime('demo', '--no-serve', env=_demo_env(free_port()) | {'SIDECAR_DATABASE_URL': database.url})
    assert result.returncode == 2
    assert f'crm-realtime demo: database "{database.name}" (SIDECAR_DATABASE_URL) already holds' in result.stderr
    assert 'give it an empty scratch database, or unset SIDECAR_DATABASE_URL' in result.stderr
    assert database.execute('SELECT count(*) FROM users') == users
    # an empty database is fine, and stays the demo's for the next run
    for _ in range(2):
        result = crm_realtime('demo', '--no-serve', env=_demo_env(free_port()) | {'SIDECAR_DATABASE_URL': empty_database.url})
        assert result.returncode == 0, result.stderr
