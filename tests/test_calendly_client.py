"""The Calendly API client on its own: rate-limit headers, URIs, errors, unreachable API."""
import email.utils

import pytest
from tornado.httpclient import AsyncHTTPClient

from sidecar.calendly.client import (CalendlyClient, CalendlyError, Forbidden, RetryPolicy, Unauthorized,
                                     Unavailable, identifier, retry_delay)

from conftest import free_port

pytestmark = pytest.mark.usefixtures('io_loop')
NOW = 1_800_000_000.0
FAST = RetryPolicy(attempts=3, backoff_base=0.01, backoff_max=0.02, connect_timeout=1, request_timeout=1)


@pytest.mark.parametrize('headers, delay', [
    ({'Retry-After': '7'}, 7.0),
    ({'Retry-After': email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
    ({'X-RateLimit-Reset': '12'}, 12.0),
    ({'X-RateLimit-Reset': str(int(NOW + 45))}, 45.0),          # an epoch time is accepted too
    ({'Retry-After': '3', 'X-RateLimit-Reset': '50'}, 3.0),     # Retry-After wins
    ({'X-RateLimit-Reset': 'soon'}, None),
    ({}, None),
])
def test_retry_delay_from_rate_limit_headers(headers, delay):
    assert retry_delay(headers, now=NOW) == delay


@pytest.mark.parametrize('uri, collection, expected', [
    ('https://api.calendly.com/scheduled_events/9f3c2b1a-6d4e', 'scheduled_events', '9f3c2b1a-6d4e'),
    ('http://127.0.0.1:9/scheduled_events/abc/', 'scheduled_events', 'abc'),
    ('https://api.calendly.com/webhook_subscriptions/w1', 'webhook_subscriptions', 'w1'),
])
def test_identifier_of_a_uri(uri, collection, expected):
    assert identifier(uri, collection) == expected


@pytest.mark.parametrize('uri', ['https://evil.example/other/abc', 'https://x/scheduled_events/a/b?c',
                                 'https://x/scheduled_events/', None])
def test_identifier_refuses_what_is_not_a_calendly_uri(uri):
    with pytest.raises(ValueError):
        identifier(uri, 'scheduled_events')


@pytest.mark.gen_test(timeout=30)
async def test_errors_carry_calendly_title_and_message_but_never_the_token(fake_calendly):
    fake_calendly.add_user('good-token', admin=False)
    http = AsyncHTTPClient(force_instance=True)
    try:
        with pytest.raises(Unauthorized) as bad:
            await CalendlyClient(http, fake_calendly.base, 'secret-bad-token', policy=FAST).me()
        assert str(bad.value) == 'Calendly answered 401 Unauthenticated: The access token is invalid'
        client = CalendlyClient(http, fake_calendly.base, 'good-token', policy=FAST)
        me = await client.me()
        with pytest.raises(Forbidden, match='Permission Denied'):
            async for _ in client.scheduled_events(organization=me['current_organization']):
                pass
        with pytest.raises(CalendlyError, match='400 Invalid Argument'):
            async for _ in client.scheduled_events():
                pass
        assert 'secret-bad-token' not in repr(client) + str(bad.value)
    finally:
        http.close()


@pytest.mark.gen_test(timeout=30)
async def test_unreachable_api_is_retried_then_unavailable():
    http = AsyncHTTPClient(force_instance=True)
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    try:
        client = CalendlyClient(http, f'http://127.0.0.1:{free_port()}', 'tok', policy=FAST, sleep=sleep)
        with pytest.raises(Unavailable, match='after 3 attempts'):
            await client.me()
        assert len(slept) == 2 and all(0 < s <= FAST.backoff_max for s in slept)
    finally:
        http.close()
