"""The official socket.io-client v4 (what the SPA runs) against a real sidecar."""
import pytest

from sidecar.events import PROSPECT_FIELDS

from conftest import make_token

pytestmark = pytest.mark.usefixtures('io_loop')


@pytest.mark.parametrize('transports', [('websocket',), ('polling',), ('websocket', 'polling')],
                         ids=['websocket', 'polling', 'seed-default'])
@pytest.mark.gen_test(timeout=60)
async def test_node_client_receives_events(transports, database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11), transports=transports)
    await c.wait_for(lambda n: n.of_type('connect'))
    assert c.of_type('connect')[0]['transport'] == transports[0]
    pid = database.insert_prospect(1, firstname='Noé')
    database.execute("UPDATE prospects SET phone = '+33 6 00 00 00 00' WHERE id = %s", [pid])
    database.execute("INSERT INTO notifications (organization_id, user_id, type, title, message) "
                     "VALUES (1, 11, 'calendly_prospect_created', 'Nouveau prospect Calendly', 'm')")
    database.execute('DELETE FROM prospects WHERE id = %s', [pid])
    events = await c.wait_events(4)
    assert [e[0] for e in events] == ['prospect:created', 'prospect:updated', 'notification',
                                      'prospect:deleted']
    assert list(events[0][1]) == list(PROSPECT_FIELDS) and events[0][1]['firstname'] == 'Noé'
    assert events[1][1]['phone'] == '+33 6 00 00 00 00'
    assert events[2][1]['type'] == 'calendly_prospect_created' and events[2][1]['meta'] == {}
    assert events[3][1] == {'id': pid}


@pytest.mark.gen_test(timeout=60)
async def test_node_client_of_other_org_receives_nothing(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    other = await node_clients(sc.url, make_token(2, 21))
    await other.wait_for(lambda n: n.of_type('connect'))
    database.insert_prospect(1)
    database.insert_prospect(2, firstname='Marker')
    await other.wait_events(1)
    assert [(e[0], e[1]['firstname']) for e in other.events] == [('prospect:created', 'Marker')]


@pytest.mark.gen_test(timeout=60)
async def test_node_client_token_expiry_is_io_server_disconnect(database, make_sidecar, node_clients):
    sc = await make_sidecar(database)
    c = await node_clients(sc.url, make_token(1, 11, exp_in=4))   # a Node start on a busy machine takes seconds
    await c.wait_for(lambda n: n.of_type('disconnect'), timeout=15)
    assert c.of_type('disconnect')[0]['reason'] == 'io server disconnect'
