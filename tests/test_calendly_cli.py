"""`crm-realtime calendly ...` as an operator runs it: a real process against the fake Calendly."""
import asyncio
import json
import subprocess
import sys

import pytest

from conftest import ROOT, free_port, sidecar_env
from fake_calendly import ENCRYPTION_KEY, calendly_env, component_of

pytestmark = pytest.mark.usefixtures('io_loop')

TOKEN = 'calendly-token-org-one-admin-' + 'z' * 20


async def cli(env, *args, stdin=''):
    """Run the command while this loop keeps serving the fake and the sidecar."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, '-m', 'sidecar', 'calendly', *args, env=env, cwd=str(ROOT),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    return proc.returncode, out.decode(), err.decode()


async def setup(database, make_sidecar, fake, **extra):
    port = free_port()
    public = f'http://127.0.0.1:{port}'
    env = calendly_env(fake, SIDECAR_PORT=str(port), SIDECAR_PUBLIC_URL=public, **extra)
    sc = await make_sidecar(database, **env)
    return sc, sidecar_env(database, **env)


@pytest.mark.gen_test(timeout=120)
async def test_connect_with_webhook_list_reauthorise_and_disconnect(database, fake_calendly, make_sidecar):
    sc, env = await setup(database, make_sidecar, fake_calendly)
    user = fake_calendly.add_user(TOKEN)

    code, out, err = await cli(env, 'connect', '--organization', '1', '--token', '-', '--webhook',
                               stdin=TOKEN + '\n')

    assert code == 0, err
    (connection_id,) = [row[0] for row in database.execute('SELECT id::text FROM crm_realtime.calendly_connection')]
    url = f'{sc.url}/webhooks/calendly/{connection_id}'
    assert f'connected {connection_id}: CRM organization 1 <- Calendly organization ' \
           f'{user["current_organization"]}' in out
    assert f'webhook URL: {url} (subscription created)' in out
    (subscription,) = fake_calendly.subscriptions.values()
    assert subscription['callback_url'] == url and subscription['scope'] == 'organization'
    assert subscription['events'] == ['invitee.created', 'invitee.canceled']
    # secrets: encrypted at rest, echoed nowhere
    row = database.execute('SELECT token_ciphertext, signing_key_ciphertext FROM crm_realtime.calendly_connection')[0]
    assert TOKEN not in row[0] and subscription['signing_key'] not in row[1]
    connection = await component_of(sc).store.get(connection_id)
    assert component_of(sc).store.signing_key(connection) == subscription['signing_key']
    assert TOKEN not in out + err and subscription['signing_key'] not in out + err

    # Calendly delivers with the key the CLI generated, and the sidecar accepts it
    invitee = fake_calendly.book(TOKEN, email='dana@example.com', name='Dana Reyes')
    (response,) = await fake_calendly.deliver('invitee.created', invitee)
    assert response.code == 200 and json.loads(response.body) == {'status': 'prospect_created'}

    code, out, _ = await cli(env, 'list', '--json')
    (listed,) = [json.loads(line) for line in out.splitlines()]
    assert listed['status'] == 'active' and listed['webhook_subscription'] == subscription['uri']
    assert listed['signing_key'] is True and TOKEN not in out

    # the token is revoked: a poll marks the connection, and `list` says what to do. Either
    # this command or the sidecar's own scheduled poll may be the one that meets the 401.
    fake_calendly.revoke(TOKEN)
    code, out, _ = await cli(env, 'poll')
    assert code == 1 and 'Calendly answered 401 Unauthenticated' in out
    code, out, _ = await cli(env, 'list')
    assert 'status: NEEDS_REAUTH - run `crm-realtime calendly connect` with a new token' in out
    assert 'last error: Calendly answered 401 Unauthenticated: The access token is invalid' in out

    # connecting again with a new token re-authorises the same connection and renews the subscription
    fake_calendly.tokens['renewed-token-' + 'r' * 20] = dict(user, admin=True)
    code, out, err = await cli(env, 'connect', '--organization', '1', '--token', 'renewed-token-' + 'r' * 20,
                               '--webhook')
    assert code == 0, err
    assert database.execute('SELECT id::text, status FROM crm_realtime.calendly_connection') == [
        (connection_id, 'active')]
    (renewed,) = fake_calendly.subscriptions.values()
    assert renewed['uri'] != subscription['uri'] and renewed['callback_url'] == url

    code, out, err = await cli(env, 'disconnect', connection_id)
    assert code == 0 and f'disconnected {connection_id}' in out
    assert fake_calendly.subscriptions == {}
    assert database.execute('SELECT count(*) FROM crm_realtime.calendly_connection') == [(0,)]
    assert database.execute('SELECT count(*) FROM prospects') == [(1,)]    # the CRM keeps its prospects


@pytest.mark.gen_test(timeout=60)
async def test_poll_reports_a_connection_another_process_marked_for_reauthorisation(
        database, fake_calendly, make_sidecar):
    sc, env = await setup(database, make_sidecar, fake_calendly)
    fake_calendly.add_user(TOKEN)
    code, out, err = await cli(env, 'connect', '--organization', '1', '--token', TOKEN)
    assert code == 0, err
    (connection_id,) = [row[0] for row in database.execute('SELECT id::text FROM crm_realtime.calendly_connection')]
    code, out, _ = await cli(env, 'poll')
    assert code == 0 and f'{connection_id}: 0 events, 0 fetched, 0 bookings applied; ok' in out

    # the running sidecar met the 401 first (its scheduled poll)
    await component_of(sc).store.mark_needs_reauth(connection_id, 'Calendly answered 401 Unauthenticated: revoked')
    for args in (['poll'], ['poll', connection_id]):
        code, out, _ = await cli(env, *args)
        assert code == 1, out
        assert out.strip() == (f'{connection_id}: not polled; needs re-authorisation '
                               '(last error: Calendly answered 401 Unauthenticated: revoked)')

    code, out, _ = await cli(env, 'poll', '00000000-0000-4000-8000-000000000000')
    assert code == 1 and 'no such connection' in out
    # a malformed id is refused before it reaches the database, with the way to find a good one
    for args in (['poll', 'not-a-uuid'], ['disconnect', '123']):
        code, out, err = await cli(env, *args)
        assert code == 2 and 'is not a connection id' in err and 'Traceback' not in err


@pytest.mark.gen_test(timeout=60)
async def test_connect_with_a_bad_token_stores_nothing(database, fake_calendly, make_sidecar):
    sc, env = await setup(database, make_sidecar, fake_calendly)
    code, out, err = await cli(env, 'connect', '--organization', '1', '--token', 'not-a-real-token')
    assert code == 1
    assert 'Calendly refused the token (Calendly answered 401 Unauthenticated: The access token is invalid)' in err
    assert 'not-a-real-token' not in out + err
    assert database.execute('SELECT count(*) FROM crm_realtime.calendly_connection') == [(0,)]


@pytest.mark.gen_test(timeout=60)
async def test_organization_scope_needs_an_admin_token(database, fake_calendly, make_sidecar):
    sc, env = await setup(database, make_sidecar, fake_calendly)
    fake_calendly.add_user(TOKEN, admin=False)
    code, out, err = await cli(env, 'connect', '--organization', '1', '--token', TOKEN)
    assert code == 1 and "may not list the organization's events" in err and '--scope user' in err
    code, out, err = await cli(env, 'connect', '--organization', '1', '--token', TOKEN, '--scope', 'user')
    assert code == 0, err
    assert database.execute('SELECT scope, subject FROM crm_realtime.calendly_connection') == [
        ('user', fake_calendly.tokens[TOKEN]['uri'])]
    assert 'webhook URL: http://127.0.0.1:' in out     # shown so the operator can subscribe by hand


@pytest.mark.parametrize('env_change, args, message', [
    ({'SIDECAR_CALENDLY_ENCRYPTION_KEY': ''}, ['connect', '--organization', '1', '--token', 't'],
     'SIDECAR_CALENDLY_ENCRYPTION_KEY is not set'),
    ({'SIDECAR_PUBLIC_URL': ''}, ['connect', '--organization', '1', '--token', 't', '--webhook'],
     'SIDECAR_PUBLIC_URL is not set'),
    ({}, ['connect', '--organization', '1', '--token', '-'], 'the token is empty'),
])
@pytest.mark.gen_test(timeout=60)
async def test_configuration_errors_name_the_setting(database, fake_calendly, make_sidecar,
                                                      env_change, args, message):
    sc, env = await setup(database, make_sidecar, fake_calendly)
    env.update(env_change)
    code, out, err = await cli(env, *args)
    assert code == 2 and message in err
    assert fake_calendly.requests == []


@pytest.mark.gen_test(timeout=60)
async def test_a_changed_encryption_key_is_reported_not_guessed(database, fake_calendly, make_sidecar):
    sc, env = await setup(database, make_sidecar, fake_calendly)
    fake_calendly.add_user(TOKEN)
    code, _, err = await cli(env, 'connect', '--organization', '1', '--token', TOKEN)
    assert code == 0, err
    env['SIDECAR_CALENDLY_ENCRYPTION_KEY'] = ENCRYPTION_KEY.replace('e', 'f')
    code, out, err = await cli(env, 'poll')
    assert code == 1 and 'is not the key it was encrypted with' in out


@pytest.mark.gen_test(timeout=60)
async def test_a_database_error_is_one_sentence_and_exit_1(database, pg_admin_url):
    from conftest import _url, _with_db
    env = sidecar_env(database, SIDECAR_DATABASE_URL=_url(_with_db(pg_admin_url, 'crm_rt_no_such_db')),
                      SIDECAR_CALENDLY_ENCRYPTION_KEY=ENCRYPTION_KEY)
    code, out, err = await cli(env, 'list')
    assert (code, out) == (1, '')
    assert err.startswith('crm-realtime calendly: the database refused: connection failed: ')
    assert err.endswith('database "crm_rt_no_such_db" does not exist.\n') and err.count('\n') == 1
    assert 'Traceback' not in err
