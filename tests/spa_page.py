"""A stand-in for the CRM's web server, serving an SPA written as the contract says.

``CrmStandIn`` is a small HTTP server on 127.0.0.1 that plays the CRM's own
origin: ``GET /`` is the SPA (below), ``GET /socket.io.min.js`` the official
browser client (from tests/js/node_modules), ``POST /auth/login`` answers
``{token, user}`` with a JWT the sidecar accepts. The page's script is the
contract's ``src/lib/socket.ts`` (connectSocket) and its login(); the only
change is where the socket connects: ``VITE_SOCKET_URL`` (the ``socket``
query parameter) when given, else the page's own origin, as the contract's
``.env`` says ("optional if same URL"). ``transports`` may be narrowed with
the query parameter of that name to test one transport at a time.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sidecar.client_bundle import CLIENT_BUILD, find_client_dist

PAGE = """<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>CRM</title></head>
<body>
<p id="state">déconnecté</p>
<ul id="prospects"></ul>
<script src="/socket.io.min.js"></script>
<script>
const params = new URLSearchParams(window.location.search);
const VITE_API_URL = window.location.origin;
const VITE_SOCKET_URL = params.get('socket');            // unset: same origin
const TRANSPORTS = (params.get('transports') || 'websocket,polling').split(',');
const state = document.getElementById('state');

// src/lib/socket.ts, as in the contract
let socket = null;

function connectSocket(token) {
  if (socket?.connected) {
    return socket;
  }

  socket = io(VITE_SOCKET_URL || window.location.origin, {
    auth: { token },
    transports: TRANSPORTS,
  });

  socket.on('connect', () => {
    console.log('🟢 Socket.IO connecté:', socket?.id);
    state.textContent = 'connecté ' + socket.io.engine.transport.name;
  });

  socket.on('disconnect', () => {
    console.log('🔴 Socket.IO déconnecté');
    state.textContent = 'déconnecté';
  });

  socket.on('connect_error', (error) => {
    console.error('❌ Erreur Socket.IO:', error.message);
    state.textContent = 'erreur: ' + error.message;
  });

  socket.on('prospect:created', (newProspect) => {
    console.log('🟢 Nouveau prospect:', newProspect);
    const li = document.createElement('li');
    li.textContent = newProspect.firstname + ' ' + newProspect.lastname;
    document.getElementById('prospects').appendChild(li);
  });

  return socket;
}

// the contract's login(): the CRM's API, then connectSocket(token)
async function login(email, password) {
  const response = await fetch(VITE_API_URL + '/auth/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password }),
  });
  const { token, user } = await response.json();
  localStorage.setItem('token', token);
  connectSocket(token);
  return { token, user };
}
</script>
</body></html>
"""


class CrmStandIn:
    def __init__(self, token: str):
        dist = find_client_dist()
        assert dist is not None, 'socket.io-client is not installed (npm ci --prefix tests/js)'
        client = (dist / CLIENT_BUILD).read_bytes()
        body = {'token': token, 'user': {'id': '11', 'email': 'u11@one.example'}}
        self.requests = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, ctype, data):
                self.send_response(status)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(data)))
                self.send_header('Cache-Control', 'no-store')
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                requests.append(('GET', self.path))
                path = self.path.split('?')[0]
                if path == '/':
                    self._send(200, 'text/html; charset=utf-8', PAGE.encode())
                elif path == '/favicon.ico':
                    self._send(200, 'image/x-icon', b'')
                elif path == '/socket.io.min.js':
                    self._send(200, 'application/javascript', client)
                else:
                    self._send(404, 'text/plain', b'not found')

            def do_POST(self):
                requests.append(('POST', self.path))
                self.rfile.read(int(self.headers.get('Content-Length') or 0))
                if self.path == '/auth/login':
                    self._send(200, 'application/json', json.dumps(body).encode())
                else:
                    self._send(404, 'text/plain', b'not found')

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f'http://127.0.0.1:{self.port}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> 'CrmStandIn':
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
