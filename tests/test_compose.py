"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

* The compose file is resolved by a real parser, Debian's ``docker-compose
  config`` (v1.29, which validates against the Compose specification), after
  doing step 1 of its instructions (copy the example env files, fill in the
  blanks) in a scratch copy of the project.
* The postgres service's first start is replayed: its init scripts, in the
  order the image runs them, through ``psql -v ON_ERROR_STOP=1`` like the
  image's entrypoint, into an empty database.
* The image's command (the Dockerfile's ENTRYPOINT + CMD) runs locally with
  the image's ENV and the sidecar service's resolved environment; only the
  database URL, host and port are redirected to this machine. /readyz must
  answer 200, and the compose health check command must pass (and fail with
  nothing listening).

* The ``scale`` profile (three replicas behind HAProxy) resolves with the
  same parser, its replicas are the same service as the default one, and
  deploy/haproxy.cfg, which the haproxy service mounts, names exactly those
  replicas, is accepted by Debian's ``haproxy -c`` and keeps its idle
  timeouts above what Socket.IO's pings need. tests/test_scale_haproxy.py
  runs that file for real in front of three ``crm-realtime serve``.

Not validated: building the image, the postgres and haproxy images
themselves, networking between containers, restart policies.
"""
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, SECRET, SidecarProcess, free_port

yaml = pytest.importorskip('yaml')

DOCKER_COMPOSE = shutil.which('docker-compose')
needs_compose = pytest.mark.skipif(DOCKER_COMPOSE is None,
                                   reason='needs docker-compose (apt install docker-compose)')
DB_PASSWORD = 'compose-test-password'


# --------------------------------------------------------------------------- Dockerfile

def dockerfile_instructions():
    """(INSTRUCTION, arguments) of ./Dockerfile, continuation lines joined."""
    text = re.sub(r'\\\n', ' ', (ROOT / 'Dockerfile').read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            word, _, rest = line.partition(' ')
            out.append((word.upper(), rest.strip()))
    return out


def final_stage():
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == 'FROM')
    return instructions[last_from:]


def image_command():
    """ENTRYPOINT + CMD of the final stage (both must use the exec form)."""
    parts = {}
    for word, rest in final_stage():
        if word in ('ENTRYPOINT', 'CMD'):
            parts[word] = json.loads(rest)
    return parts.get('ENTRYPOINT', []) + parts.get('CMD', [])


def image_env():
    env = {}
    for word, rest in final_stage():
        if word == 'ENV':
            for item in shlex.split(rest):
                key, _, value = item.partition('=')
                env[key] = value
    return env


def test_image_runs_crm_realtime_serve_as_a_non_root_user():
    assert image_command() == ['crm-realtime', 'serve']
    users = [rest for word, rest in final_stage() if word == 'USER']
    assert users and users[-1] not in ('root', '0')
    final_base = final_stage()[0][1]
    assert final_base.startswith('python:') and 'slim' in final_base
    assert image_env()['SIDECAR_HOST'] == '0.0.0.0'


def test_the_wheel_the_image_installs_lists_every_sidecar_package():
    # The image installs a wheel, not the checkout: a subpackage missing from
    # setup.cfg would be missing from the image while every local test passes.
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    listed = set(cfg['options']['packages'].split())
    on_disk = {'.'.join(p.parent.relative_to(ROOT).parts) for p in (ROOT / 'sidecar').rglob('__init__.py')
               if '__pycache__' not in p.parts}
    assert on_disk <= listed
    assert {'sidecar.sql', 'sidecar.sql.examples'} <= listed


# --------------------------------------------------------------------------- .dockerignore

def _segments_match(pattern, path):
    if not pattern:
        return not path
    if pattern[0] == '**':
        return any(_segments_match(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], pattern[0]) and _segments_match(pattern[1:], path[1:])


def docker_ignored(path, patterns):
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory matches."""
    ignored = False
    parts = path.split('/')
    for raw in patterns:
        negate = raw.startswith('!')
        pattern = raw[1:] if negate else raw
        pattern = [p for p in pattern.strip('/').split('/') if p]
        if any(_segments_match(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_secret():
    patterns = [line.strip() for line in (ROOT / '.dockerignore').read_text().splitlines()
                if line.strip() and not line.startswith('#')]
    copied = []
    for word, rest in dockerfile_instructions():
        if word == 'COPY' and not rest.startswith('--from'):
            copied.extend(s.rstrip('/') for s in rest.split()[:-1])
    assert copied
    for source in copied:
        files = [p for p in (ROOT / source).rglob('*') if p.is_file()] if (ROOT / source).is_dir() else [ROOT / source]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if '__pycache__' not in rel and not rel.endswith('.pyc'):
                assert not docker_ignored(rel, patterns), rel
    for secret_or_junk in ('.git/config', 'deploy/sidecar.env', '.env', 'tests/conftest.py',
                           'addon/17.0/crm_realtime/__manifest__.py', 'sidecar/__pycache__/app.cpython-312.pyc',
                           'tests/js/node_modules/ws/index.js'):
        assert docker_ignored(secret_or_junk, patterns), secret_or_junk


# --------------------------------------------------------------------------- compose

@pytest.fixture
def project(tmp_path):
    """A scratch copy of the project after step 1 of docker-compose.yml's instructions."""
    for name in ('docker-compose.yml', 'Dockerfile', '.dockerignore'):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / 'sql', tmp_path / 'sql')
    (tmp_path / 'deploy').mkdir()
    shutil.copy(ROOT / 'deploy' / 'haproxy.cfg', tmp_path / 'deploy' / 'haproxy.cfg')
    postgres_env = (ROOT / 'deploy' / 'postgres.env.example').read_text()
    (tmp_path / 'deploy' / 'postgres.env').write_text(
        postgres_env.replace('POSTGRES_PASSWORD=\n', f'POSTGRES_PASSWORD={DB_PASSWORD}\n'))
    sidecar_env = (ROOT / 'deploy' / 'sidecar.env.example').read_text()
    (tmp_path / 'deploy' / 'sidecar.env').write_text(
        sidecar_env.replace(':POSTGRES_PASSWORD@', f':{DB_PASSWORD}@')
                   .replace('SIDECAR_JWT_SECRET=\n', f'SIDECAR_JWT_SECRET={SECRET}\n'))
    return tmp_path


def volumes(service):
    """(source, target, read_only) of each volume, whichever syntax the parser printed."""
    out = []
    for v in service.get('volumes', []):
        if isinstance(v, str):
            source, target, *mode = v.split(':')
            out.append((source, target, mode == ['ro']))
        else:
            out.append((v['source'], v['target'], bool(v.get('read_only'))))
    return out


def init_scripts(service):
    """Host paths of the /docker-entrypoint-initdb.d files, in the order the image runs them."""
    return [source for target, source, _ in sorted(
        (t, s, ro) for s, t, ro in volumes(service) if t.startswith('/docker-entrypoint-initdb.d/'))]


def compose_config(project, *profiles):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('COMPOSE_', 'DOCKER_'))}
    result = subprocess.run([DOCKER_COMPOSE, '--project-directory', str(project),
                             '-f', str(project / 'docker-compose.yml'),
                             *[a for p in profiles for a in ('--profile', p)], 'config'],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@needs_compose
def test_compose_file_is_valid_and_wires_database_sidecar_and_health_checks(project):
    config = compose_config(project)
    postgres, sidecar = config['services']['postgres'], config['services']['sidecar']

    assert postgres['image'].startswith('postgres:')
    assert [Path(source).relative_to(project).as_posix() for source in init_scripts(postgres)] == [
        'sql/examples/reference_crm.sql', 'sql/install.sql']
    assert all(ro for source, _, ro in volumes(postgres) if source.startswith('/'))
    assert 'pg_isready' in ' '.join(postgres['healthcheck']['test'])

    assert Path(sidecar['build']['context']) == project
    assert sidecar['depends_on'] == {'postgres': {'condition': 'service_healthy'}}
    assert '/readyz' in ' '.join(sidecar['healthcheck']['test'])
    (port,) = sidecar['ports']
    target = port['target'] if isinstance(port, dict) else port.rsplit(':', 1)[-1]
    assert str(target) == image_env()['SIDECAR_PORT']

    env = sidecar['environment']
    assert env['SIDECAR_JWT_SECRET'] == SECRET
    db = postgres['environment']
    assert env['SIDECAR_DATABASE_URL'] == (
        f"postgresql://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@postgres:5432/{db['POSTGRES_DB']}")
    # the database's secrets stay out of the sidecar and the reverse
    assert not any(k.startswith('SIDECAR_') for k in db)
    assert not any(k.startswith('POSTGRES_') for k in env)


@needs_compose
def test_compose_refuses_a_misspelt_key(project):
    compose = project / 'docker-compose.yml'
    compose.write_text(compose.read_text().replace('start_period: 10s', 'start_perod: 10s'))
    result = subprocess.run([DOCKER_COMPOSE, '--project-directory', str(project), '-f', str(compose), 'config'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'start_perod' in result.stderr


def _psql(conninfo, path):
    subprocess.run(['psql', '-v', 'ON_ERROR_STOP=1', '--no-psqlrc', '-q', '-d', conninfo, '-f', str(path)],
                   check=True, capture_output=True, timeout=60)


@needs_compose
@pytest.mark.skipif(shutil.which('psql') is None, reason='needs psql')
def test_image_command_serves_readyz_with_the_compose_environment(project, empty_database):
    config = compose_config(project)
    # 1. the postgres service's first start: its init scripts, in the image's order
    postgres = config['services']['postgres']
    for source in init_scripts(postgres):
        _psql(empty_database.conninfo, source)
    assert empty_database.execute("SELECT to_regclass('crm_realtime.journal') IS NOT NULL, "
                                  "to_regclass('public.prospects') IS NOT NULL") == [(True, True)]

    # 2. the image's command with the image's ENV and the service's environment;
    #    only where the database is and which port to use differ on this machine
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith('SIDECAR_')}
    env.update(image_env())
    env.update(config['services']['sidecar']['environment'])
    assert env['SIDECAR_DATABASE_URL'].split('@')[1] == 'postgres:5432/crm'
    env.update(SIDECAR_DATABASE_URL=empty_database.url, SIDECAR_HOST='127.0.0.1', SIDECAR_PORT=str(port))
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    command = image_command()
    assert shutil.which(command[0], path=env['PATH']), f'{command[0]} is not installed here'

    # SidecarProcess for its wait/stop/log helpers; it is started here with the
    # image's command instead of its own ``python -m sidecar serve``
    sidecar = SidecarProcess(env, port=port)
    sidecar._log = open(sidecar.log_path, 'ab')
    sidecar.proc = subprocess.Popen(command, env=env, stdout=sidecar._log, stderr=subprocess.STDOUT,
                                    cwd=str(project))
    try:
        sidecar.wait_ready(timeout=30)
        with urllib.request.urlopen(sidecar.url + '/readyz', timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read()) == {'status': 'ready'}

        # 3. the compose health check, run as the container would (its python is ours)
        check = config['services']['sidecar']['healthcheck']['test']
        assert check[0] == 'CMD' and check[1] == 'python'
        argv = [sys.executable] + check[2:]
        assert subprocess.run(argv, env=env, timeout=30).returncode == 0
        closed = dict(env, SIDECAR_PORT=str(free_port()))
        assert subprocess.run(argv, env=closed, capture_output=True, timeout=30).returncode != 0
    finally:
        sidecar.stop()
    assert SECRET not in sidecar.log() and DB_PASSWORD not in sidecar.log()


# --------------------------------------------------------------------------- scale profile

HAPROXY = shutil.which('haproxy') or ('/usr/sbin/haproxy' if os.access('/usr/sbin/haproxy', os.X_OK) else None)


def haproxy_cfg():
    """{section header: [lines]} of deploy/haproxy.cfg, comments dropped."""
    sections, current = {}, None
    for raw in (ROOT / 'deploy' / 'haproxy.cfg').read_text().splitlines():
        line = raw.split('#', 1)[0].rstrip()
        if not line:
            continue
        if not line[0].isspace():
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def seconds(value):
    units = {'ms': 0.001, 's': 1, 'm': 60, 'h': 3600, 'd': 86400}
    number, unit = re.fullmatch(r'(\d+)(ms|s|m|h|d)?', value).groups()
    return int(number) * units[unit or 'ms']


@needs_compose
def test_scale_profile_runs_three_replicas_behind_haproxy(project):
    default = compose_config(project)['services']
    config = compose_config(project, 'scale')
    services = config['services']
    replicas = ['sidecar', 'sidecar-2', 'sidecar-3']
    assert set(services) == {'postgres', 'haproxy', *replicas}
    # without the profile, only the default replica (docker-compose 1.29's
    # `config` lists every service; `up` starts profiled ones only when asked)
    assert 'profiles' not in default['sidecar']
    assert all(services[name]['profiles'] == ['scale'] for name in ('sidecar-2', 'sidecar-3', 'haproxy'))

    first = services['sidecar']
    for name in replicas[1:]:
        twin = services[name]
        for key in ('build', 'image', 'environment', 'depends_on', 'healthcheck', 'stop_grace_period'):
            assert twin[key] == first[key], (name, key)
        assert 'ports' not in twin        # reached through haproxy only
    # the drain (SIGTERM: /readyz 503 for SIDECAR_DRAIN_SECONDS) fits in the grace period
    from sidecar.settings import load_settings
    drain = load_settings(dict(first['environment'], SIDECAR_DATABASE_URL='postgresql://x@y/z')).drain_seconds
    assert drain + 5 <= seconds(first['stop_grace_period'])

    proxy = services['haproxy']
    assert proxy['image'].startswith('haproxy:')
    mounts = {target: (Path(source), ro) for source, target, ro in volumes(proxy)}
    assert mounts['/usr/local/etc/haproxy/haproxy.cfg'] == (project / 'deploy' / 'haproxy.cfg', True)
    assert proxy['depends_on'] == {name: {'condition': 'service_healthy'} for name in replicas}
    (port,) = proxy['ports']
    published = port['published'] if isinstance(port, dict) else port.split(':')[0]
    assert str(published) == '3000'

    cfg = haproxy_cfg()
    backend = cfg['backend sidecar']
    servers = [line.split()[1:3] for line in backend if line.startswith('server ')]
    assert [address for _, address in servers] == [f'{name}:{image_env()["SIDECAR_PORT"]}' for name in replicas]
    assert 'option httpchk GET /readyz' in backend and 'http-check expect status 200' in backend
    assert 'bind :3000' in cfg['frontend crm']
    assert 'use_backend sidecar if { path_beg /socket.io/ }' in cfg['frontend crm']
    # polling stays on the replica that made its session
    assert 'stick on url_param(sid)' in backend
    assert any(line.startswith('stick store-response ') and "json_query('$.sid')" in line for line in backend)
    # HAProxy marks a draining replica down before its sockets close
    check = dict(re.findall(r'\b(inter|fall|rise) (\w+)', next(l for l in backend if l.startswith('default-server'))))
    assert seconds(check['inter']) * int(check['fall']) < drain

    # idle timeouts: above a long poll (ping interval) and a quiet websocket (interval + timeout)
    settings = load_settings({'SIDECAR_DATABASE_URL': 'postgresql://x@y/z', 'SIDECAR_JWT_SECRET': SECRET})
    quiet = settings.ping_interval_seconds + settings.ping_timeout_seconds
    timeouts = {line.split()[1]: seconds(line.split()[2]) for line in cfg['defaults'] if line.startswith('timeout ')}
    assert min(timeouts['client'], timeouts['server'], timeouts['tunnel']) > quiet
    assert 'option forwardfor' in cfg['defaults']
    # no engine.io sid in HAProxy's log: the path without its query string
    assert not [line for section in cfg.values() for line in section if line.startswith('option httplog')]
    (log_format,) = [line for line in cfg['frontend crm'] if line.startswith('log-format ')]
    assert '%HPO' in log_format and not re.search(r'%(\{[^}]*\})?(r|HU|HQ)\b', log_format)


@pytest.mark.skipif(HAPROXY is None and not os.environ.get('CI'), reason='needs haproxy (apt install haproxy)')
def test_haproxy_cfg_passes_haproxy_check_and_a_typo_does_not(tmp_path):
    assert HAPROXY, 'haproxy is required in CI (.ci/run installs it)'
    result = subprocess.run([HAPROXY, '-c', '-f', str(ROOT / 'deploy' / 'haproxy.cfg')],
                            capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and 'Configuration file is valid' in output, output
    # the only warnings: compose service names that do not resolve on this machine
    warnings = [line for line in output.splitlines() if '[WARNING]' in line and 'Warnings were found' not in line]
    assert all('could not resolve address' in line for line in warnings), warnings
    assert not [line for line in output.splitlines() if '[ALERT]' in line]

    broken = tmp_path / 'haproxy.cfg'
    broken.write_text((ROOT / 'deploy' / 'haproxy.cfg').read_text().replace('timeout tunnel 1h', 'timeout tunel 1h'))
    result = subprocess.run([HAPROXY, '-c', '-f', str(broken)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and 'tunel' in result.stdout + result.stderr
