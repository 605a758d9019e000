"""The official socket.io-client browser build, served by the sidecar.

Like a Node socket.io server serving ``/socket.io/socket.io.js``, the sidecar
serves ``GET /client/socket.io.min.js`` so that a page (the demo, the Odoo
addon's web client service) can load the client that matches the server.
The build is not committed: it is the ``dist`` folder of an npm-installed
``socket.io-client``, looked for in this order:

1. ``/usr/share/crm-realtime/socket.io-client/dist`` (where the Docker image
   puts it at build time),
2. the checkout's ``tests/js/node_modules`` (what ``./dev demo`` and
   ``./dev test`` install with ``npm ci``),
3. ``node_modules`` and ``tests/js/node_modules`` under the current directory
   (``npm install socket.io-client`` next to a pip install).

Offline, any of these works once installed; when none is there the URL answers
404 with the command that installs it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import tornado.web

CLIENT_BUILD = 'socket.io.min.js'
IMAGE_DIST = Path('/usr/share/crm-realtime/socket.io-client/dist')
INSTALL_HINT = ('socket.io-client is not installed: run `npm ci --prefix tests/js` in the checkout '
                '(or `npm install socket.io-client` in the directory the sidecar runs from).\n')


def search_path() -> Iterable[Path]:
    checkout = Path(__file__).resolve().parent.parent
    yield IMAGE_DIST
    for node_modules in (checkout / 'tests' / 'js' / 'node_modules', Path.cwd() / 'node_modules',
                         Path.cwd() / 'tests' / 'js' / 'node_modules'):
        yield node_modules / 'socket.io-client' / 'dist'


def find_client_dist(search: Optional[Iterable[Path]] = None) -> Optional[Path]:
    """The ``dist`` folder holding ``socket.io.min.js``, or None."""
    for dist in search if search is not None else search_path():
        if (dist / CLIENT_BUILD).is_file():
            return dist
    return None


class _MissingClient(tornado.web.RequestHandler):
    def get(self, _name):
        self.set_status(404)
        self.set_header('Content-Type', 'text/plain; charset=utf-8')
        self.finish(INSTALL_HINT)


class _ClientBuild(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path):
        # pages on other origins (the SPA, the ERP) load it with a <script> tag
        self.set_header('Access-Control-Allow-Origin', '*')


def client_route(prefix: str):
    """A tornado route serving the build (or the install hint) under ``prefix``."""
    dist = find_client_dist()
    if dist is None:
        return (prefix + r'(.*)', _MissingClient)
    return (prefix + r'(socket\.io\.min\.js(?:\.map)?)', _ClientBuild, {'path': str(dist)})
