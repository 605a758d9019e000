"""deploy/nginx/*.conf in Debian's nginx, and the client's address behind either proxy.

The two nginx snippets are included, as their comments say, in a minimal
nginx.conf (the CRM's ``server`` block answers everything else itself); only
the upstream's address is changed to the test sidecar's port. ``nginx -t``
must accept it, and then nginx runs it: the official Node client connects
through it on websocket and on polling and receives an event. A refused
connection made through nginx, and one through haproxy (deploy/haproxy.cfg),
from 127.0.0.2 is logged by the sidecar with 127.0.0.2, the address the proxy
forwarded, not the proxy's 127.0.0.1.
"""
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import ROOT, free_port, make_token
from haproxy_rig import HAProxy, require_haproxy
from proxy_clients import refused_from

NGINX = shutil.which('nginx') or ('/usr/sbin/nginx' if os.access('/usr/sbin/nginx', os.X_OK) else None)
SNIPPETS = ROOT / 'deploy' / 'nginx'


def require_nginx():
    if NGINX is None:
        if os.environ.get('CI'):
            pytest.fail('needs nginx (.ci/run installs it)')
        pytest.skip('needs nginx (apt-get install nginx)')


def nginx_conf(tmp_path, port, sidecar_port):
    http_part = (SNIPPETS / 'crm-realtime-http.conf').read_text()
    http_part, n = re.subn(r'^(\s*)server 127\.0\.0\.1:3001;$', rf'\g<1>server 127.0.0.1:{sidecar_port};',
                           http_part, flags=re.M)
    assert n == 1
    (tmp_path / 'crm-realtime-http.conf').write_text(http_part)
    shutil.copy(SNIPPETS / 'crm-realtime-location.conf', tmp_path / 'crm-realtime-location.conf')
    for d in ('body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'):
        (tmp_path / d).mkdir()
    conf = tmp_path / 'nginx.conf'
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/crm-realtime-http.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "the CRM's API\\n"; }}
        include {tmp_path}/crm-realtime-location.conf;
    }}
}}
""")
    return conf


@pytest.fixture
def nginx(tmp_path, database, sidecar_process):
    require_nginx()
    sidecar = sidecar_process(database)
    port = free_port()
    conf = nginx_conf(tmp_path, port, sidecar.port)
    check = subprocess.run([NGINX, '-t', '-p', str(tmp_path), '-c', str(conf), '-e', 'stderr'],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and 'test is successful' in check.stderr, check.stderr
    proc = subprocess.Popen([NGINX, '-p', str(tmp_path), '-c', str(conf), '-e', 'stderr'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
    yield f'http://127.0.0.1:{port}', sidecar
    proc.terminate()
    proc.wait(10)


def test_nginx_rejects_a_broken_snippet(tmp_path):
    require_nginx()
    conf = nginx_conf(tmp_path, free_port(), 3001)
    location = tmp_path / 'crm-realtime-location.conf'
    location.write_text(location.read_text().replace('proxy_http_version 1.1;', 'proxy_http_versoin 1.1;'))
    check = subprocess.run([NGINX, '-t', '-p', str(tmp_path), '-c', str(conf), '-e', 'stderr'],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode != 0 and 'proxy_http_versoin' in check.stderr


@pytest.mark.gen_test(timeout=60)
async def test_official_client_through_nginx_on_both_transports(nginx, database, node_clients):
    url, sidecar = nginx
    clients = {}
    for transports in (('websocket',), ('polling',)):
        c = await node_clients(url, make_token(1, 11), transports=transports)
        await c.wait_for(lambda n: n.of_type('connect'))
        assert c.of_type('connect')[0]['transport'] == transports[0]
        clients[transports[0]] = c
    database.insert_prospect(1, firstname='Par', lastname='Nginx')
    for c in clients.values():
        await c.wait_for(lambda n: [e for e in n.events if e[0] == 'prospect:created'])
        assert [e[1]['firstname'] for e in c.events if e[0] == 'prospect:created'] == ['Par']


def test_refusal_through_nginx_logs_the_forwarded_address(nginx):
    url, sidecar = nginx
    answer = refused_from(url, '127.0.0.2')
    assert answer.startswith('44') and 'Authentication error' in answer
    wait_log(sidecar, r'refused socket \S+ from 127\.0\.0\.2: ')


def test_refusal_through_haproxy_logs_the_forwarded_address(database, sidecar_process):
    require_haproxy()
    replicas = [sidecar_process(database) for _ in range(3)]
    proxy = HAProxy([r.port for r in replicas]).start()
    try:
        proxy.wait_states({'sidecar-1': 'UP', 'sidecar-2': 'UP', 'sidecar-3': 'UP'})
        for _ in range(3):       # three sessions: round robin puts one on each replica
            answer = refused_from(proxy.url, '127.0.0.2')
            assert answer.startswith('44') and 'Authentication error' in answer
    finally:
        proxy.stop()
    for replica in replicas:
        wait_log(replica, r'refused socket \S+ from 127\.0\.0\.2: ')
        assert not re.search(r'refused socket \S+ from 127\.0\.0\.1: ', replica.log())
        # the access log too: the forwarded address, and no session id
        assert re.search(r'tornado\.access: 200 POST /socket\.io/ \(127\.0\.0\.2\)', replica.log())
        assert 'sid=' not in replica.log()


def wait_log(sidecar, pattern, timeout=5):
    deadline = time.time() + timeout
    while not re.search(pattern, sidecar.log()):
        assert time.time() < deadline, f'{pattern!r} not in the sidecar log:\n{sidecar.log()}'
        time.sleep(0.05)
