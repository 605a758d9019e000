"""The official socket.io-client browser build, served by the sidecar.

Like a Node socket.io server serving ``/socket.io/socket.io.js``, the sidecar
serves ``GET /client/socket.io.min.js`` so that a page (the demo, the Odoo
addon's web client service) can load the client that matches the server.
The build is not committed: it is the ``dist`` folder of an npm-installed
``socket.io-client``, looked for in this order:

1. ``/usr/share/crm-realtime/socket.io-client/dist`` (where the Docker image
   puts it at build time),
2. ``<prefix>/share/crm-realtime/socket.io-client/dist``, where ``<prefix>``
   is the Python installation the sidecar runs from (its virtualenv, or
   ``/usr/local``): what ``crm-realtime client-bundle install`` fills,
3. the checkout's ``tests/js/node_modules`` (what ``./dev demo`` and
   ``./dev test`` install with ``npm ci``),
4. ``node_modules`` and ``tests/js/node_modules`` under the current directory
   (``npm install socket.io-client`` next to a pip install).

Offline, any of these works once installed; when none is there the URL answers
404 with the command that installs it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import tornado.web

CLIENT_BUILD = 'socket.io.min.js'
#: the npm version range ``client-bundle install`` asks for (the one tests/js is tested with)
CLIENT_VERSION = '^4.8.1'
IMAGE_DIST = Path('/usr/share/crm-realtime/socket.io-client/dist')
INSTALL_HINT = ('socket.io-client is not installed: run `crm-realtime client-bundle install` '
                '(or, in a checkout, `npm ci --prefix tests/js`).\n')


def installed_home() -> Path:
    """Where ``client-bundle install`` puts the client for this Python installation."""
    return Path(sys.prefix) / 'share' / 'crm-realtime' / 'socket.io-client'


def search_path() -> Iterable[Path]:
    checkout = Path(__file__).resolve().parent.parent
    yield IMAGE_DIST
    yield installed_home() / 'dist'
    for node_modules in (checkout / 'tests' / 'js' / 'node_modules', Path.cwd() / 'node_modules',
                         Path.cwd() / 'tests' / 'js' / 'node_modules'):
        yield node_modules / 'socket.io-client' / 'dist'


def find_client_dist(search: Optional[Iterable[Path]] = None) -> Optional[Path]:
    """The ``dist`` folder holding ``socket.io.min.js``, or None."""
    for dist in search if search is not None else search_path():
        if (dist / CLIENT_BUILD).is_file():
            return dist
    return None


def _say(message: str) -> None:
    print(f'crm-realtime: {message}', file=sys.stderr)


def install(version: str = CLIENT_VERSION, home: Optional[Path] = None) -> int:
    """``crm-realtime client-bundle install``: npm-install socket.io-client into ``installed_home()``.

    npm works in a scratch directory; only the package's ``dist`` folder and
    its ``package.json`` (for the version) are kept. Returns the exit status.
    """
    home = home or installed_home()
    npm = shutil.which('npm')
    if npm is None:
        _say('npm is not installed; install Node.js and npm, then run `crm-realtime client-bundle install` again.')
        return 1
    with tempfile.TemporaryDirectory(prefix='crm-realtime-client-') as scratch:
        (Path(scratch) / 'package.json').write_text(json.dumps(
            {'private': True, 'dependencies': {'socket.io-client': version}}), encoding='utf-8')
        result = subprocess.run([npm, 'install', '--prefix', scratch, '--omit=dev', '--no-audit',
                                 '--no-fund', '--loglevel=error', '--prefer-offline'],
                                capture_output=True, text=True)
        package = Path(scratch) / 'node_modules' / 'socket.io-client'
        if result.returncode != 0 or not (package / 'dist' / CLIENT_BUILD).is_file():
            detail = ' '.join((result.stderr or result.stdout).split())[:300] or 'no output'
            _say(f'npm could not install socket.io-client@{version} ({detail}).')
            return 1
        try:
            home.parent.mkdir(parents=True, exist_ok=True)
            staged = home.with_name(home.name + '.new')
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir()
            shutil.copytree(package / 'dist', staged / 'dist')
            shutil.copy2(package / 'package.json', staged / 'package.json')
            if home.exists():
                shutil.rmtree(home)
            staged.rename(home)
        except OSError as exc:
            _say(f'cannot write {home} ({exc.strerror}); run the command as a user who may write there.')
            return 1
    installed = json.loads((home / 'package.json').read_text(encoding='utf-8')).get('version', '?')
    print(f'installed socket.io-client {installed} in {home}; the sidecar serves it at '
          f'/client/{CLIENT_BUILD} (restart a running sidecar).')
    return 0


def status() -> int:
    """``crm-realtime client-bundle status``: 0 and where it is served from, or 1 and the hint."""
    dist = find_client_dist()
    if dist is None:
        _say(INSTALL_HINT.strip())
        return 1
    meta = dist.parent / 'package.json'
    version = json.loads(meta.read_text(encoding='utf-8')).get('version', '?') if meta.is_file() else '?'
    print(f'socket.io-client {version} is served at /client/{CLIENT_BUILD} from {dist}')
    return 0


class _MissingClient(tornado.web.RequestHandler):
    def get(self, _name):
        self.set_status(404)
        self.set_header('Content-Type', 'text/plain; charset=utf-8')
        self.finish(INSTALL_HINT)


class ClientBuild(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path):
        # pages on other origins (the SPA, the ERP) load it with a <script> tag
        self.set_header('Access-Control-Allow-Origin', '*')


def client_route(prefix: str):
    """A tornado route serving the build (or the install hint) under ``prefix``."""
    dist = find_client_dist()
    if dist is None:
        return (prefix + r'(.*)', _MissingClient)
    return (prefix + r'(socket\.io\.min\.js(?:\.map)?)', ClientBuild, {'path': str(dist)})
