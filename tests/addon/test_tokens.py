"""The addon's token minting and settings, against a real sidecar and real Socket.IO clients."""
import time

import jwt
import pytest

from conftest import SECRET

from .support import config, once, tokens

pytestmark = pytest.mark.usefixtures('io_loop')

URL = 'https://rt.example.com'


def params(**values):
    base = {config.PARAM_SIDECAR_URL: URL, config.PARAM_JWT_SECRET: SECRET,
            config.PARAM_TOKEN_LIFETIME: '300'}
    base.update(values)
    return base.get


def test_minted_token_carries_user_company_and_expiry_only():
    answer = tokens.token_response(config.read_config(params()), 6, 1, now=1_700_000_000)
    claims = jwt.decode(answer['token'], SECRET, algorithms=['HS256'], options={'verify_exp': False})
    assert claims == {'sub': '6', 'organization_id': 1, 'exp': 1_700_000_300}
    assert answer == {'enabled': True, 'url': URL, 'token': answer['token'],
                      'expires_at': 1_700_000_300, 'organization_id': 1}


def test_config_defaults_and_trailing_slash():
    cfg = config.read_config(params(**{config.PARAM_SIDECAR_URL: URL + '/',
                                       config.PARAM_TOKEN_LIFETIME: None}))
    assert cfg.sidecar_url == URL and cfg.token_lifetime == config.DEFAULT_TOKEN_LIFETIME
    assert SECRET not in repr(cfg)


@pytest.mark.parametrize('values, message', [
    ({config.PARAM_SIDECAR_URL: None}, 'crm_realtime.sidecar_url is not set'),
    ({config.PARAM_SIDECAR_URL: 'rt.example.com'}, "crm_realtime.sidecar_url='rt.example.com' is not an http(s) URL"),
    ({config.PARAM_JWT_SECRET: ''}, 'crm_realtime.jwt_secret is not set'),
    ({config.PARAM_JWT_SECRET: 'short-secret'}, 'crm_realtime.jwt_secret is too short'),
    ({config.PARAM_TOKEN_LIFETIME: 'soon'}, "crm_realtime.token_lifetime='soon' is not a whole number"),
    ({config.PARAM_TOKEN_LIFETIME: '2'}, "crm_realtime.token_lifetime='2' is out of range"),
    ({config.PARAM_TOKEN_LIFETIME: '100000'}, "crm_realtime.token_lifetime='100000' is out of range"),
])
def test_bad_or_missing_settings_are_named(values, message):
    with pytest.raises(config.ConfigError) as err:
        config.read_config(params(**values))
    assert str(err.value).startswith(message)
    assert 'short-secret' not in str(err.value)


def test_settings_form_accepts_empty_and_refuses_malformed():
    config.validate('', '', 0)       # not configured yet: allowed
    config.validate(False, False, False)
    config.validate(URL, SECRET, 300)
    with pytest.raises(config.ConfigError, match='too short'):
        config.validate(URL, 'x' * 31, 300)


def test_settings_check_the_secret_as_odoo_will_store_it():
    """Odoo strips Char settings before storing them: 30 characters padded to 34 are 30."""
    padded = '  ' + 's' * 30 + '  '
    assert len(padded) >= config.MIN_SECRET_BYTES
    assert config.stored_char(padded) == 's' * 30
    with pytest.raises(config.ConfigError, match='too short'):
        config.validate(URL, padded, 300)
    with pytest.raises(config.ConfigError, match="is not an http"):
        config.validate('  rt.example.com ', SECRET, 300)
    config.validate('  ' + URL + ' ', ' ' + SECRET + ' ', 300)      # long enough once stripped
    # what the token route then reads back is what was validated
    stored = config.read_config(params(**{config.PARAM_JWT_SECRET: config.stored_char(' ' + SECRET + ' ')}))
    assert stored.jwt_secret == SECRET


def test_a_problem_is_reported_once_per_database_until_fixed():
    seen = once.Once()
    assert seen.first('db1', 'not set') is True
    assert seen.first('db1', 'not set') is False
    assert seen.first('db2', 'not set') is True           # another database hears it too
    assert seen.first('db1', 'too short') is True          # a different problem is news
    seen.rearm('db1')                                      # configured: next problem is news again
    assert seen.first('db1', 'not set') is True
    assert seen.first('db2', 'not set') is False


@pytest.mark.gen_test(timeout=60)
async def test_sidecar_accepts_minted_tokens_and_places_them_in_their_company(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    cfg = config.read_config(params(**{config.PARAM_SIDECAR_URL: sc.url}))
    # the reference CRM of the fixtures: organization 1 holds users 11 and 12, organization 2 user 21
    u11 = tokens.token_response(cfg, 11, 1)
    u21 = tokens.token_response(cfg, 21, 2)
    one = await clients(u11['url'], u11['token'])
    two = await clients(u21['url'], u21['token'])
    assert one.client.connected and two.client.connected
    database.insert_prospect(1, firstname='For one')
    database.execute("INSERT INTO notifications (organization_id, user_id, type, title) "
                     "VALUES (1, 11, 'info', 'for user 11')")
    await one.wait_events(2)
    assert [(e[0], e[1].get('firstname') or e[1].get('title')) for e in one.events] == [
        ('prospect:created', 'For one'), ('notification', 'for user 11')]
    database.insert_prospect(2, firstname='Marker')
    await two.wait_events(1)
    assert [(e[0], e[1]['firstname']) for e in two.events] == [('prospect:created', 'Marker')]


@pytest.mark.gen_test(timeout=60)
async def test_sidecar_refuses_expired_and_foreign_tokens(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    expired = tokens.mint_token(SECRET, 11, 1, 10, now=time.time() - 60)
    foreign = tokens.mint_token('another-secret-' + 'y' * 40, 11, 1, 300)
    refused_expired = await clients(sc.url, expired.token, expect_error=True)
    refused_foreign = await clients(sc.url, foreign.token, expect_error=True)
    assert refused_expired.connect_error == {'message': 'Authentication error',
                                             'data': {'reason': 'token_expired'}}
    assert refused_foreign.connect_error == {'message': 'Authentication error',
                                             'data': {'reason': 'invalid_signature'}}
    assert not refused_expired.client.connected and not refused_foreign.client.connected


@pytest.mark.gen_test(timeout=60)
async def test_sidecar_disconnects_a_minted_token_at_its_expiry(database, make_sidecar, clients):
    sc = await make_sidecar(database)
    minted = tokens.mint_token(SECRET, 11, 1, 2)
    c = await clients(sc.url, minted.token)
    await c.wait_for(lambda r: r.disconnect_reasons, timeout=10)
    assert time.time() >= minted.expires_at - 1
    assert not c.client.connected


def test_mint_refuses_missing_identity():
    with pytest.raises(ValueError):
        tokens.mint_token(SECRET, None, 1, 300)
    with pytest.raises(ValueError):
        tokens.mint_token(SECRET, 6, False, 300)
