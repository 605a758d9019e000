"""Debian's haproxy with the shipped deploy/haproxy.cfg, on loopback, for the tests.

``loopback_config`` takes deploy/haproxy.cfg as it is and changes only where
things are: the frontend's bind, the sidecar replicas' and the CRM's
addresses (docker service names in the file) become 127.0.0.1 ports, and a
runtime API socket is added so a test can read the servers' health states.
Everything else (routing, health checks, stickiness, timeouts) is the file's.

``HAProxy`` runs it in the foreground (``-db``) as a child process; ``Swarm``
drives tests/js/swarm.mjs (many official socket.io-client sockets in one Node
process).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / 'deploy' / 'haproxy.cfg'
HAPROXY = shutil.which('haproxy') or ('/usr/sbin/haproxy' if os.access('/usr/sbin/haproxy', os.X_OK) else None)
SIDECAR_SERVERS = ('sidecar-1', 'sidecar-2', 'sidecar-3')


def require_haproxy():
    if HAPROXY is None:
        message = 'needs haproxy (apt-get install haproxy; .ci/run installs it)'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)


def loopback_config(front_port: int, sidecar_ports: Sequence[int], crm_port: Optional[int],
                    admin_socket: str) -> str:
    text = CONFIG.read_text()
    changes = [(r'^(\s*)bind :3000$', rf'\g<1>bind 127.0.0.1:{front_port}')]
    for name, port in zip(SIDECAR_SERVERS, sidecar_ports):
        changes.append((rf'^(\s*server {name}) \S+:3001$', rf'\g<1> 127.0.0.1:{port}'))
    if crm_port is not None:
        changes.append((r'^(\s*server crm-api) crm-api:3000 (.*)$', rf'\g<1> 127.0.0.1:{crm_port} \g<2>'))
    changes.append((r'^global$', f'global\n    stats socket {admin_socket} mode 600 level admin'))
    for pattern, replacement in changes:
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        assert n == 1, f'deploy/haproxy.cfg: expected one line matching {pattern!r}, found {n}'
    return text


class HAProxy:
    def __init__(self, sidecar_ports: Sequence[int], crm_port: Optional[int] = None):
        from conftest import free_port
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.dir = Path(tempfile.mkdtemp(prefix='crm-rt-haproxy-'))
        self.admin = str(self.dir / 'admin.sock')
        self.cfg = self.dir / 'haproxy.cfg'
        self.cfg.write_text(loopback_config(self.port, sidecar_ports, crm_port, self.admin))
        self.log_path = self.dir / 'haproxy.log'
        self.proc: Optional[subprocess.Popen] = None

    def check(self) -> subprocess.CompletedProcess:
        return subprocess.run([HAPROXY, '-c', '-f', str(self.cfg)], capture_output=True, text=True, timeout=30)

    def start(self, timeout=10) -> 'HAProxy':
        self._log = open(self.log_path, 'ab')
        self.proc = subprocess.Popen([HAPROXY, '-db', '-f', str(self.cfg)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f'haproxy exited with {self.proc.returncode}:\n{self.log()}')
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close()
                if os.path.exists(self.admin):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f'haproxy did not listen in {timeout}s:\n{self.log()}')

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.admin)
            s.sendall(line.encode() + b'\n')
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b''.join(chunks).decode()

    def states(self, backend='sidecar') -> Dict[str, str]:
        """{server name: 'UP' | 'DOWN' | 'MAINT' | ...} from the runtime API's ``show stat``."""
        lines = self.command('show stat').splitlines()
        header = lines[0].lstrip('# ').split(',')
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(',')))
            if row.get('pxname') == backend and row.get('svname') not in ('FRONTEND', 'BACKEND'):
                out[row['svname']] = row['status']
        return out

    def wait_states(self, expected: Dict[str, str], timeout=15, backend='sidecar'):
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self.states(backend)
            if all(states.get(k, '').startswith(v) for k, v in expected.items()):
                return states
            time.sleep(0.1)
        raise AssertionError(f'haproxy states {self.states(backend)}, expected {expected}')

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
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''


class Swarm:
    """tests/js/swarm.mjs: many official clients in one Node process."""

    def __init__(self, proc):
        self.proc = proc
        self.ready = None

    @classmethod
    async def start(cls, url: str, clients: List[dict], **config) -> 'Swarm':
        cfg = {'url': url, 'clients': clients, **config}
        proc = await asyncio.create_subprocess_exec(
            'node', str(ROOT / 'tests' / 'js' / 'swarm.mjs'), cwd=str(ROOT / 'tests' / 'js'),
            env=dict(os.environ, SWARM_CONFIG=json.dumps(cfg)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024)
        return cls(proc)

    async def _line(self, kind: str, timeout: float) -> dict:
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                raise AssertionError(f'swarm exited ({self.proc.returncode}) before {kind!r}')
            msg = json.loads(raw)
            if msg['type'] == kind:
                return msg

    async def wait_ready(self, timeout=30) -> dict:
        self.ready = await self._line('ready', timeout)
        return self.ready

    async def ask(self, what: str, timeout=20) -> dict:
        self.proc.stdin.write(what.encode() + b'\n')
        await self.proc.stdin.drain()
        return await self._line(what, timeout)

    async def close(self):
        if self.proc.returncode is None:
            try:
                self.proc.stdin.write(b'exit\n')
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self.proc.kill()
                await self.proc.wait()
