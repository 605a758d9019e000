"""Raw engine.io requests from a chosen loopback address, for the proxy tests.

``refused_from(url, source)`` opens a polling session through ``url`` from the
local address ``source`` (any 127.x.y.z is this machine) and sends a Socket.IO
CONNECT with a bad token, the way a browser would, over one keep-alive
connection. It returns the server's CONNECT_ERROR packet. The sidecar logs
the refusal with the client's address: behind a proxy, the one the proxy
forwarded (X-Forwarded-For), not the proxy's own.
"""
import http.client
import json
from urllib.parse import urlsplit


def refused_from(url: str, source: str, token: str = 'not-a-jwt') -> str:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(source, 0))
    try:
        conn.request('GET', '/socket.io/?EIO=4&transport=polling')
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200 and body.startswith('0'), (response.status, body)
        sid = json.loads(body[1:])['sid']
        path = f'/socket.io/?EIO=4&transport=polling&sid={sid}'
        conn.request('POST', path, body='40' + json.dumps({'token': token}),
                     headers={'Content-Type': 'text/plain;charset=UTF-8'})
        response = conn.getresponse()
        assert response.status == 200, (response.status, response.read())
        response.read()
        conn.request('GET', path)
        response = conn.getresponse()
        answer = response.read().decode()
        assert response.status == 200, (response.status, answer)
        return answer
    finally:
        conn.close()
