"""The addon's settings: three system parameters (``ir.config_parameter``).

========================================  =========================================
``crm_realtime.sidecar_url``              Base URL the browser connects to, e.g.
                                          ``https://rt.example.com``.
``crm_realtime.jwt_secret``               HS256 signing secret; the sidecar's
                                          ``SIDECAR_JWT_SECRET`` (32 bytes or more).
``crm_realtime.token_lifetime``           Seconds a minted token is valid
                                          (default 300).
========================================  =========================================

Empty URL and secret mean "not configured": the token route then answers
``{"enabled": false}`` and the web client stays offline. A present but
malformed value is refused when saved, with a sentence naming the parameter.
The secret is never part of a message.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

PARAM_SIDECAR_URL = 'crm_realtime.sidecar_url'
PARAM_JWT_SECRET = 'crm_realtime.jwt_secret'
PARAM_TOKEN_LIFETIME = 'crm_realtime.token_lifetime'

DEFAULT_TOKEN_LIFETIME = 300
#: Shorter than a few seconds leaves no time to refresh; longer than a day
#: keeps a revoked user connected for too long (the sidecar only checks ``exp``).
MIN_TOKEN_LIFETIME = 5
MAX_TOKEN_LIFETIME = 86400
#: The sidecar refuses shorter HS* secrets (SIDECAR_JWT_SECRET), so do we.
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A parameter is missing or malformed; the message is one sentence for the admin."""


@dataclasses.dataclass(frozen=True)
class RealtimeConfig:
    sidecar_url: str
    jwt_secret: str = dataclasses.field(repr=False)
    token_lifetime: int = DEFAULT_TOKEN_LIFETIME


def _url(value: Optional[str]) -> str:
    url = (value or '').strip()
    if url and not url.startswith(('http://', 'https://')):
        raise ConfigError(f'{PARAM_SIDECAR_URL}={url!r} is not an http(s) URL '
                          '(expected e.g. https://rt.example.com).')
    return url.rstrip('/')


def _secret(value: Optional[str]) -> str:
    secret = value or ''
    if secret and len(secret.encode('utf-8')) < MIN_SECRET_BYTES:
        raise ConfigError(f'{PARAM_JWT_SECRET} is too short (expected at least '
                          f'{MIN_SECRET_BYTES} bytes, the same secret as the sidecar\'s SIDECAR_JWT_SECRET).')
    return secret


def _lifetime(value) -> int:
    if value in (None, '', False):
        return DEFAULT_TOKEN_LIFETIME
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{PARAM_TOKEN_LIFETIME}={value!r} is not a whole number of seconds.') from None
    if not MIN_TOKEN_LIFETIME <= seconds <= MAX_TOKEN_LIFETIME:
        raise ConfigError(f'{PARAM_TOKEN_LIFETIME}={value!r} is out of range '
                          f'(expected {MIN_TOKEN_LIFETIME} to {MAX_TOKEN_LIFETIME} seconds).')
    return seconds


def stored_char(value) -> str:
    """What Odoo stores for a ``Char`` settings field with ``config_parameter``.

    ``res.config.settings.set_values`` strips Char values before it stores
    them ("storing developer keys as ir.config_parameter may lead to nasty
    bugs when users leave spaces around them", odoo/addons/base/models/res_config.py,
    17.0 to 19.0); empty becomes unset.
    """
    return str(value).strip() if value else ''


def validate(sidecar_url, jwt_secret, token_lifetime) -> None:
    """Refuse malformed values (what the settings form checks on save); empty is allowed.

    The URL and the secret are checked as Odoo will store them (``stored_char``):
    a secret padded with spaces to the minimum length is refused, since what
    lands in the parameter would be too short.
    """
    _url(stored_char(sidecar_url))
    _secret(stored_char(jwt_secret))
    _lifetime(token_lifetime)


def read_config(get_param: Callable[[str], Optional[str]]) -> RealtimeConfig:
    """Build the configuration from ``get_param`` (e.g. ``ir.config_parameter.sudo().get_param``).

    Raises ``ConfigError`` when a value is malformed or the URL or the secret is unset.
    """
    url = _url(get_param(PARAM_SIDECAR_URL))
    secret = _secret(get_param(PARAM_JWT_SECRET))
    lifetime = _lifetime(get_param(PARAM_TOKEN_LIFETIME))
    if not url:
        raise ConfigError(f'{PARAM_SIDECAR_URL} is not set (expected the sidecar\'s public URL).')
    if not secret:
        raise ConfigError(f'{PARAM_JWT_SECRET} is not set (expected the sidecar\'s SIDECAR_JWT_SECRET).')
    return RealtimeConfig(url, secret, lifetime)
