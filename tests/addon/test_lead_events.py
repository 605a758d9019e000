"""crm_lead changes reach the right company's browsers: hooks' SQL + real sidecar + minted tokens."""
import datetime

import pytest

from conftest import SECRET
from sidecar.events import NOTIFICATION_FIELDS, PROSPECT_FIELDS

from .support import config, insert_lead, odoo_db, tokens  # noqa: F401 - odoo_db is a fixture

pytestmark = pytest.mark.usefixtures('io_loop')


def _token(sc, user_id, company_id):
    cfg = config.RealtimeConfig(sc.url, SECRET, 300)
    return tokens.token_response(cfg, user_id, company_id)['token']


@pytest.mark.gen_test(timeout=60)
async def test_lead_lifecycle_reaches_its_company_and_not_another(odoo_db, make_sidecar, clients):
    sc = await make_sidecar(odoo_db)
    sales = await clients(sc.url, _token(sc, 6, 1))
    other = await clients(sc.url, _token(sc, 7, 2))

    lead = insert_lead(odoo_db, 1, contact_name='Grace Hopper', description='<p>met at <b>fair</b></p>')
    odoo_db.execute("UPDATE crm_lead SET stage_id = 2, write_date = now() AT TIME ZONE 'UTC' "
                    'WHERE id = %s', [lead])
    odoo_db.execute('DELETE FROM crm_lead WHERE id = %s', [lead])

    events = await sales.wait_events(3)
    assert [e[0] for e in events] == ['prospect:created', 'prospect:updated', 'prospect:deleted']
    created, updated, deleted = (e[1] for e in events)
    assert list(created) == list(PROSPECT_FIELDS)
    assert created['id'] == str(lead)
    assert {k: created[k] for k in ('firstname', 'lastname', 'email', 'phone', 'status', 'source', 'notes')} == {
        'firstname': None, 'lastname': 'Grace Hopper', 'email': 'ada@example.com',
        'phone': '+33 1 23 45 67 89', 'status': '1', 'source': '3', 'notes': '<p>met at <b>fair</b></p>'}
    # Odoo stores naive UTC: the capture reads it as UTC, so events carry an offset
    stamp = datetime.datetime.fromisoformat(created['created_at'])
    assert stamp.tzinfo is not None
    assert abs(stamp - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=5)
    assert updated['status'] == '2'
    assert deleted == {'id': str(lead)}

    insert_lead(odoo_db, 2, contact_name='Marker')
    await other.wait_events(1)
    assert [(e[0], e[1]['lastname']) for e in other.events] == [('prospect:created', 'Marker')]


@pytest.mark.gen_test(timeout=60)
async def test_lead_without_company_is_silent_until_it_gets_one(odoo_db, make_sidecar, clients):
    sc = await make_sidecar(odoo_db)
    one = await clients(sc.url, _token(sc, 6, 1))
    two = await clients(sc.url, _token(sc, 7, 2))
    lead = insert_lead(odoo_db, None, contact_name='Shared lead')
    odoo_db.execute('UPDATE crm_lead SET company_id = 2 WHERE id = %s', [lead])
    odoo_db.execute('UPDATE crm_lead SET company_id = 1 WHERE id = %s', [lead])
    await two.wait_events(2)
    await one.wait_events(1)
    assert [e[0] for e in two.events] == ['prospect:created', 'prospect:deleted']
    assert [(e[0], e[1]['lastname']) for e in one.events] == [('prospect:created', 'Shared lead')]


@pytest.mark.gen_test(timeout=60)
async def test_notification_rows_reach_one_user_or_the_whole_company(odoo_db, make_sidecar, clients):
    sc = await make_sidecar(odoo_db)
    admin = await clients(sc.url, _token(sc, 2, 1))
    sales = await clients(sc.url, _token(sc, 6, 1))
    other = await clients(sc.url, _token(sc, 7, 2))
    odoo_db.execute(
        "INSERT INTO crm_realtime_notification (company_id, user_id, type, title, message, meta, create_date) "
        "VALUES (1, 6, 'success', 'Lead won', 'Grace signed', '{\"lead_id\": 4}', now() AT TIME ZONE 'UTC')")
    odoo_db.execute(
        "INSERT INTO crm_realtime_notification (company_id, type, title, create_date) "
        "VALUES (1, 'info', 'Pipeline review at 3pm', now() AT TIME ZONE 'UTC')")
    await sales.wait_events(2)
    await admin.wait_events(1)
    personal, broadcast = (e[1] for e in sales.events)
    assert list(personal) == list(NOTIFICATION_FIELDS)
    assert (personal['type'], personal['title'], personal['message'], personal['meta']) == (
        'success', 'Lead won', 'Grace signed', {'lead_id': 4})
    assert broadcast['title'] == 'Pipeline review at 3pm' and broadcast['meta'] == {}
    assert [e[1]['title'] for e in admin.events] == ['Pipeline review at 3pm']
    insert_lead(odoo_db, 2, contact_name='Marker')
    await other.wait_events(1)
    assert [e[0] for e in other.events] == ['prospect:created']
