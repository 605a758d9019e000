"""The HTTP surface around Socket.IO: CORS, and the docs that describe it."""
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from sidecar.events import EVENT_NAMES, NOTIFICATION_FIELDS, PROSPECT_FIELDS

from conftest import ROOT

pytestmark = pytest.mark.usefixtures('io_loop')


async def _handshake(url, origin):
    try:
        r = await AsyncHTTPClient().fetch(f'{url}/socket.io/?EIO=4&transport=polling',
                                          headers={'Origin': origin})
        return r.code, r.headers.get('Access-Control-Allow-Origin')
    except HTTPClientError as exc:
        return exc.code, None


@pytest.mark.gen_test(timeout=60)
async def test_cors_allows_only_configured_origins(database, make_sidecar):
    sc = await make_sidecar(database, SIDECAR_CORS_ORIGINS='http://app.example:5173')
    assert await _handshake(sc.url, 'http://app.example:5173') == (200, 'http://app.example:5173')
    code, allowed = await _handshake(sc.url, 'http://evil.example')
    assert code == 400 and allowed is None


@pytest.mark.gen_test(timeout=60)
async def test_cors_defaults_to_same_origin(database, make_sidecar):
    sc = await make_sidecar(database)
    code, _ = await _handshake(sc.url, 'http://elsewhere.example')
    assert code == 400
    assert (await _handshake(sc.url, sc.url))[0] == 200


def test_every_event_and_field_is_in_the_readme_catalogue():
    readme = (ROOT / 'README.md').read_text()
    catalogue = readme[readme.index('### Event catalogue'):]
    for name in EVENT_NAMES:
        assert f'`{name}`' in catalogue, name
    for field in PROSPECT_FIELDS + NOTIFICATION_FIELDS:
        assert field in catalogue, field


@pytest.mark.gen_test(timeout=60)
async def test_sidecar_serves_the_official_client_build(database, make_sidecar):
    from sidecar.client_bundle import find_client_dist
    dist = find_client_dist()
    if dist is None:
        pytest.fail('socket.io-client is not installed (npm ci --prefix tests/js)')
    sc = await make_sidecar(database)
    r = await AsyncHTTPClient().fetch(sc.url + '/client/socket.io.min.js')
    assert r.body == (dist / 'socket.io.min.js').read_bytes()
    assert r.headers['Access-Control-Allow-Origin'] == '*'
    assert 'javascript' in r.headers['Content-Type']


@pytest.mark.gen_test(timeout=30)
async def test_missing_client_build_answers_with_the_install_command(tmp_path, monkeypatch):
    import tornado.httpserver
    import tornado.netutil
    import tornado.web
    from sidecar import client_bundle
    monkeypatch.setattr(client_bundle, 'search_path', lambda: [tmp_path / 'nowhere'])
    app = tornado.web.Application([client_bundle.client_route('/client/')])
    sockets = tornado.netutil.bind_sockets(0, '127.0.0.1')
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    try:
        with pytest.raises(HTTPClientError) as info:
            await AsyncHTTPClient().fetch(f'http://127.0.0.1:{sockets[0].getsockname()[1]}'
                                          '/client/socket.io.min.js')
        assert info.value.code == 404
        assert b'npm ci --prefix tests/js' in info.value.response.body
    finally:
        server.stop()
