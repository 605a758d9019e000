"""Calendly webhook signatures (pure: no I/O, no framework).

Header ``Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is
the lowercase hex HMAC-SHA256 of ``b"<t>." + raw body`` keyed with the
subscription's signing key taken as a UTF-8 string. The body must be the bytes
received: re-serialised JSON would not match.

``verify`` raises ``SignatureError`` whose message is for the log (it never
contains the key or the expected digest); the HTTP client only ever sees a
fixed "invalid signature".
"""
from __future__ import annotations

import hashlib
import hmac
from typing import List, Optional, Tuple

HEADER = 'Calendly-Webhook-Signature'
#: Calendly's documented tolerance; applies in both directions (clock skew).
TOLERANCE_SECONDS = 180


class SignatureError(Exception):
    """The signature is missing, malformed, stale or wrong (message: log text)."""


def digest(signing_key: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(signing_key.encode('utf-8'), b'%d.' % timestamp + body, hashlib.sha256)
    return mac.hexdigest()


def sign(signing_key: str, timestamp: int, body: bytes) -> str:
    """The header value Calendly would send for ``body`` at ``timestamp``."""
    return f't={timestamp},v1={digest(signing_key, timestamp, body)}'


def parse(header: Optional[str]) -> Tuple[int, List[str]]:
    """``(t, [v1, ...])`` from a header value; raises SignatureError when malformed."""
    if header is None or not header.strip():
        raise SignatureError('no Calendly-Webhook-Signature header')
    timestamp = None
    signatures = []
    for part in header.split(','):
        key, sep, value = part.strip().partition('=')
        if not sep:
            raise SignatureError('signature header has a part without "="')
        if key == 't':
            if timestamp is not None or not value.isdigit():
                raise SignatureError('signature header has a bad or repeated t')
            timestamp = int(value)
        elif key == 'v1':
            if len(value) != 64 or any(c not in '0123456789abcdefABCDEF' for c in value):
                raise SignatureError('signature header has a v1 that is not 64 hex digits')
            signatures.append(value.lower())
        # other schemes (v0, future versions) are ignored, as Calendly advises
    if timestamp is None:
        raise SignatureError('signature header has no t')
    if not signatures:
        raise SignatureError('signature header has no v1')
    return timestamp, signatures


def verify(header: Optional[str], body: bytes, signing_key: str, now: float,
           tolerance: int = TOLERANCE_SECONDS) -> int:
    """Check ``header`` against the raw ``body``; returns the signed timestamp."""
    timestamp, signatures = parse(header)
    age = now - timestamp
    if age > tolerance:
        raise SignatureError(f'signature is stale ({int(age)} s old, tolerance {tolerance} s)')
    if age < -tolerance:
        raise SignatureError(f'signature is from the future ({int(-age)} s ahead, tolerance {tolerance} s)')
    expected = digest(signing_key, timestamp, body)
    # every candidate is compared, in constant time, so timing says nothing
    if not any([hmac.compare_digest(expected, s) for s in signatures]):
        raise SignatureError('signature does not match the body and signing key')
    return timestamp
