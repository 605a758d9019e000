"""Configuration: every bad value stops start-up with one sentence naming it."""
import re
import subprocess
import sys

import pytest

from sidecar.settings import SETTINGS, ConfigError, load_settings

from conftest import ROOT, SECRET

BASE = {'SIDECAR_DATABASE_URL': 'postgresql://u@127.0.0.1:5432/crm', 'SIDECAR_JWT_SECRET': SECRET}


def test_defaults():
    s = load_settings(BASE)
    assert (s.host, s.port, s.jwt_algorithms, s.jwt_org_claim, s.jwt_user_claim) == \
        ('127.0.0.1', 3001, ('HS256',), 'organization_id', 'sub')


BAD = [
    ({'SIDECAR_PORT': 'abc'}, "SIDECAR_PORT='abc' is not an integer."),
    ({'SIDECAR_PORT': '70000'}, "SIDECAR_PORT='70000' is out of range"),
    ({'SIDECAR_JWT_ALGORITHMS': 'HS256,none'}, 'allows "none"'),
    ({'SIDECAR_JWT_ALGORITHMS': 'HS999'}, "'HS999' is not a known JWT algorithm"),
    ({'SIDECAR_JWT_ALGORITHMS': 'HS256,RS256', 'SIDECAR_JWT_PUBLIC_KEY': '-----BEGIN x'},
     'mixes HMAC and public-key'),
    ({'SIDECAR_JWT_SECRET': ''}, 'SIDECAR_JWT_SECRET is not set'),
    ({'SIDECAR_JWT_SECRET': 'short'}, 'SIDECAR_JWT_SECRET is too short'),
    ({'SIDECAR_JWT_ALGORITHMS': 'RS256'}, 'SIDECAR_JWT_PUBLIC_KEY is not set'),
    ({'SIDECAR_JWT_ALGORITHMS': 'RS256', 'SIDECAR_JWT_PUBLIC_KEY': 'abc'}, 'is not a PEM key'),
    ({'SIDECAR_DATABASE_URL': ''}, 'SIDECAR_DATABASE_URL is not set'),
    ({'SIDECAR_DATABASE_URL': 'mysql://x'}, 'SIDECAR_DATABASE_URL is not a PostgreSQL URL'),
    ({'SIDECAR_CORS_ORIGINS': 'example.com'}, "'example.com' is not an origin"),
    ({'SIDECAR_LOG_LEVEL': 'LOUD'}, "SIDECAR_LOG_LEVEL='LOUD' is not a log level"),
    ({'SIDECAR_LISTENER_CHECK_SECONDS': 'soon'}, "SIDECAR_LISTENER_CHECK_SECONDS='soon' is not a number"),
    ({'SIDECAR_PORTT': '1'}, 'SIDECAR_PORTT is not a setting of crm-realtime'),
    ({'SIDECAR_JWT_SECRET': '', 'SIDECAR_JWT_SECRET_FILE': '/nonexistent/secret'}, "SIDECAR_JWT_SECRET_FILE='/nonexistent/secret' cannot be read"),
    ({'SIDECAR_JWT_SECRET': 'change-me-to-the-crm-signing-secret-at-least-32-bytes'},
     'SIDECAR_JWT_SECRET is still the example\'s "change me" placeholder'),
    ({'SIDECAR_JWT_SECRET': 'Please CHANGE ME, this is 32 bytes or more'}, '"change me" placeholder'),
    ({'SIDECAR_CALENDLY_ENCRYPTION_KEY': 'changeme-changeme-changeme-changeme'},
     'SIDECAR_CALENDLY_ENCRYPTION_KEY is still the example\'s "change me" placeholder'),
]


@pytest.mark.parametrize('env,message', BAD, ids=[m for _, m in BAD])
def test_bad_setting_is_named(env, message):
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, **env})
    assert message in str(info.value)
    assert str(info.value).count('.') >= 1 and '\n' not in str(info.value)


def test_secret_from_file(tmp_path):
    f = tmp_path / 'secret'
    f.write_text(SECRET + '\n')
    s = load_settings({'SIDECAR_DATABASE_URL': BASE['SIDECAR_DATABASE_URL'], 'SIDECAR_JWT_SECRET_FILE': str(f)})
    assert s.jwt_secret == SECRET


def test_repr_hides_secrets():
    text = repr(load_settings(BASE))
    assert SECRET not in text and 'jwt_secret=***' in text and 'u@127.0.0.1' not in text


def test_serve_stops_with_one_sentence_on_bad_config():
    env = {'PATH': '/usr/bin:/bin', **BASE, 'SIDECAR_PORT': 'eighty'}
    result = subprocess.run([sys.executable, '-m', 'sidecar', 'serve'], env=env, cwd=str(ROOT),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "crm-realtime: configuration error: SIDECAR_PORT='eighty' is not an integer."
    assert SECRET not in result.stderr


def test_every_setting_is_documented_in_readme_and_env_example():
    readme = (ROOT / 'README.md').read_text()
    example = (ROOT / '.env.example').read_text()
    for s in SETTINGS:
        assert f'`{s.env}`' in readme, f'{s.env} missing from README'
        assert re.search(rf'^#?\s*{s.env}=', example, re.M), f'{s.env} missing from .env.example'


def test_commands_without_tokens_need_only_the_database_url():
    s = load_settings({'SIDECAR_DATABASE_URL': BASE['SIDECAR_DATABASE_URL']}, require_auth=False)
    assert s.database_url == BASE['SIDECAR_DATABASE_URL'] and s.jwt_secret == ''
    with pytest.raises(ConfigError, match='SIDECAR_DATABASE_URL is not set'):
        load_settings({}, require_auth=False)


def test_fill_gives_values_only_to_unset_settings():
    filled = load_settings({'SIDECAR_DATABASE_URL': BASE['SIDECAR_DATABASE_URL']}, fill={'jwt_secret': 'f' * 40})
    assert filled.jwt_secret == 'f' * 40
    assert load_settings(BASE, fill={'jwt_secret': 'f' * 40}).jwt_secret == SECRET


def test_the_demo_reads_its_settings_through_settings_py():
    from sidecar.demo.demo import demo_settings
    s = demo_settings({'SIDECAR_PORT': '4100'})
    assert (s.port, s.database_url) == (4100, None)
    assert len(s.jwt_secret) >= 32 and len(s.calendly_encryption_key) >= 32
    assert demo_settings(BASE).jwt_secret == SECRET
    with pytest.raises(ConfigError, match='SIDECAR_PORTT is not a setting'):
        demo_settings({'SIDECAR_PORTT': '1'})
    with pytest.raises(ConfigError, match='cannot be used by the demo'):
        demo_settings({'SIDECAR_JWT_ALGORITHMS': 'RS256', 'SIDECAR_JWT_PUBLIC_KEY': '-----BEGIN PUBLIC KEY-----'})
    source = (ROOT / 'sidecar' / 'demo' / 'demo.py').read_text()
    assert 'os.environ' not in source
