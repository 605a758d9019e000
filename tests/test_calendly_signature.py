"""Calendly-Webhook-Signature: the documented test vector and every way to get it wrong."""
import json

import pytest

from sidecar.calendly.signature import SignatureError, digest, parse, sign, verify

# from /work/shared/calendly-v2.md
VECTOR_KEY = '5mEzn9C-I28UtwOjZJtFoob0sAAFZ95GbZkqj4y3i0I'
VECTOR_T = 1767225600
VECTOR_BODY = b'{"event":"invitee.created","payload":{}}'
VECTOR_V1 = '2554c26202473ab049db2e73a30087fb7c2b9e6a3c2a95cc9ff691ec0d1c4779'


def test_documented_test_vector():
    assert digest(VECTOR_KEY, VECTOR_T, VECTOR_BODY) == VECTOR_V1
    assert sign(VECTOR_KEY, VECTOR_T, VECTOR_BODY) == f't={VECTOR_T},v1={VECTOR_V1}'
    assert verify(f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, now=VECTOR_T + 5) == VECTOR_T


@pytest.mark.parametrize('header, now', [
    (f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_T),
    (f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_T + 180),            # exactly at the tolerance
    (f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_T - 180),            # small clock skew ahead
    (f' t={VECTOR_T} , v1={VECTOR_V1.upper()} ', VECTOR_T),      # spaces, upper-case hex
    (f'v1={VECTOR_V1},t={VECTOR_T}', VECTOR_T),                  # any order
    (f't={VECTOR_T},v1={"0" * 64},v1={VECTOR_V1}', VECTOR_T),    # one of several v1 (key rotation)
    (f't={VECTOR_T},v0=abc,v1={VECTOR_V1}', VECTOR_T),           # unknown schemes ignored
])
def test_valid_signatures_are_accepted(header, now):
    assert verify(header, VECTOR_BODY, VECTOR_KEY, now=now) == VECTOR_T


@pytest.mark.parametrize('header, body, key, now, reason', [
    (None, VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'no Calendly-Webhook-Signature'),
    ('', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'no Calendly-Webhook-Signature'),
    ('garbage', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'without "="'),
    (f'v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'no t'),
    (f't={VECTOR_T}', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'no v1'),
    (f't=yesterday,v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'bad or repeated t'),
    (f't={VECTOR_T},t={VECTOR_T},v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'bad or repeated t'),
    (f't={VECTOR_T},v1=abc', VECTOR_BODY, VECTOR_KEY, VECTOR_T, '64 hex'),
    (f't={VECTOR_T},v1={"z" * 64}', VECTOR_BODY, VECTOR_KEY, VECTOR_T, '64 hex'),
    (f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, VECTOR_T + 181, 'stale'),
    (f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, VECTOR_T - 181, 'future'),
    (f't={VECTOR_T},v1={VECTOR_V1}', VECTOR_BODY, 'another-key', VECTOR_T, 'does not match'),
    (f't={VECTOR_T + 1},v1={VECTOR_V1}', VECTOR_BODY, VECTOR_KEY, VECTOR_T, 'does not match'),
    # the same JSON re-serialised with spaces is another body
    (f't={VECTOR_T},v1={VECTOR_V1}', json.dumps(json.loads(VECTOR_BODY)).encode(), VECTOR_KEY, VECTOR_T,
     'does not match'),
])
def test_bad_signatures_are_refused_with_a_log_reason(header, body, key, now, reason):
    with pytest.raises(SignatureError, match=reason) as info:
        verify(header, body, key, now=now)
    assert key not in str(info.value) and VECTOR_V1 not in str(info.value)


def test_parse_returns_timestamp_and_lowercased_signatures():
    assert parse(f't=12,v1={"A" * 64}') == (12, ['a' * 64])
