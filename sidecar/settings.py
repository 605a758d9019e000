"""Settings: the one place that reads the environment.

Every setting is declared once in ``SETTINGS`` as (name, default, help, parser);
``load_settings`` turns an environment mapping into a frozen ``Settings`` and
the README table and ``.env.example`` are checked against the same list by the
tests. A missing or bad value raises ``ConfigError`` with one sentence naming
the variable, the value and what was expected. Secret values are never echoed.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Tuple

PREFIX = 'SIDECAR_'

#: JWT algorithms pyjwt can verify and we accept in the allow-list ("none" never).
KNOWN_ALGORITHMS = (
    'HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512',
    'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512', 'EdDSA',
)


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one sentence for the operator."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str            # attribute name; the variable is SIDECAR_<NAME>
    default: Optional[str]
    help: str
    parse: Callable[[str, str], Any]
    secret: bool = False
    file_variant: bool = False   # also read from SIDECAR_<NAME>_FILE

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()


def _str(env, value):
    return value


def _number_range(kind, lo, hi):
    what = 'an integer' if kind is int else 'a number'

    def parse(env, value):
        try:
            n = kind(value)
        except ValueError:
            raise ConfigError(f'{env}={value!r} is not {what}.') from None
        if not lo <= n <= hi:
            raise ConfigError(f'{env}={value!r} is out of range (expected {lo} to {hi}).')
        return n
    return parse


def _int_range(lo, hi):
    return _number_range(int, lo, hi)


def _float_range(lo, hi):
    return _number_range(float, lo, hi)


def _bool(env, value):
    v = value.strip().lower()
    if v in ('1', 'true', 'yes', 'on'):
        return True
    if v in ('0', 'false', 'no', 'off'):
        return False
    raise ConfigError(f'{env}={value!r} is not a boolean (expected true or false).')


def _list(env, value):
    return tuple(v.strip() for v in value.split(',') if v.strip())


def _algorithms(env, value):
    algs = _list(env, value)
    if not algs:
        raise ConfigError(f'{env} is empty (expected a comma-separated list such as HS256).')
    for alg in algs:
        if alg.lower() == 'none':
            raise ConfigError(f'{env}={value!r} allows "none", which would accept unsigned tokens.')
        if alg not in KNOWN_ALGORITHMS:
            raise ConfigError(f'{env}={value!r}: {alg!r} is not a known JWT algorithm '
                              f'(expected some of {", ".join(KNOWN_ALGORITHMS)}).')
    return algs


def _database_url(env, value):
    if not value.startswith(('postgresql://', 'postgres://')) and '=' not in value:
        raise ConfigError(f'{env} is not a PostgreSQL URL (expected postgresql://user@host:port/dbname).')
    return value


def _log_level(env, value):
    levels = ('DEBUG', 'INFO', 'WARNING', 'ERROR')
    if value.upper() not in levels:
        raise ConfigError(f'{env}={value!r} is not a log level (expected one of {", ".join(levels)}).')
    return value.upper()


def _cors(env, value):
    origins = _list(env, value)
    if origins == ('*',):
        return '*'
    for o in origins:
        if not o.startswith(('http://', 'https://')):
            raise ConfigError(f'{env}: {o!r} is not an origin (expected * or http(s)://host[:port], comma-separated).')
    return list(origins)


def _optional_key(env, value):
    if value and len(value) < 32:
        raise ConfigError(f'{env} is too short (expected at least 32 characters of random key material).')
    return value


SETTINGS: Tuple[Setting, ...] = (
    Setting('database_url', None,
            'PostgreSQL URL of the CRM database, e.g. postgresql://crm_realtime@127.0.0.1:5432/crm. '
            'Required by `serve`; `demo` starts an embedded server when unset.',
            _database_url, secret=True, file_variant=True),
    Setting('host', '127.0.0.1', 'Interface the HTTP/Socket.IO server binds to.', _str),
    Setting('port', '3001', 'TCP port of the HTTP/Socket.IO server.', _int_range(0, 65535)),
    Setting('jwt_secret', '', 'Shared secret for HS* tokens (the CRM\'s signing secret).',
            _str, secret=True, file_variant=True),
    Setting('jwt_public_key', '', 'PEM public key for RS*/ES*/PS*/EdDSA tokens.',
            _str, secret=False, file_variant=True),
    Setting('jwt_algorithms', 'HS256', 'Comma-separated allow-list of JWT algorithms ("none" is refused).',
            _algorithms),
    Setting('jwt_org_claim', 'organization_id', 'Claim holding the user\'s organization id.', _str),
    Setting('jwt_user_claim', 'sub', 'Claim holding the user id.', _str),
    Setting('jwt_audience', '', 'Required "aud" of tokens; empty = not checked.', _str),
    Setting('jwt_issuer', '', 'Required "iss" of tokens; empty = not checked.', _str),
    Setting('jwt_leeway_seconds', '0', 'Clock skew tolerated on exp/nbf/iat, in seconds.', _int_range(0, 300)),
    Setting('cors_origins', '', 'Origins allowed to connect from a browser: "*" or a comma-separated '
            'list of http(s)://host[:port]; empty = same origin only.', _cors),
    Setting('websocket_compression', 'false', 'Per-message deflate on websockets. Off by default: '
            'events are small and deflate costs CPU per frame and memory per connection.', _bool),
    Setting('max_backlog_bytes', str(8 * 1024 * 1024), 'Bytes a websocket may have waiting to be '
            'sent before the server closes it (a client that stopped reading). The client reconnects '
            'and catches up from the journal. 0 = no limit.', _int_range(0, 1 << 40)),
    Setting('max_http_buffer_bytes', '1000000', 'Largest message a client may send: a polling POST '
            'body (refused with 413 before it is read) or a websocket message (the connection is '
            'closed). Socket.IO CONNECT packets with their auth are far below it.',
            _int_range(1024, 64 * 1024 * 1024)),
    Setting('recovery_readers', '2', 'Journal reads for recovering clients that may run at once '
            '(one read serves every client of an organization recovering together; see "Delivery '
            'guarantee"). The pool holds this many connections plus two.', _int_range(1, 32)),
    Setting('ping_interval_seconds', '25', 'How often the server pings each client (socket.io\'s '
            'pingInterval). Each ping comes at a random point of the last tenth of the interval, so '
            'clients that connected together are not pinged in one burst.', _float_range(1, 3600)),
    Setting('ping_timeout_seconds', '20', 'How long a client may take to answer a ping before it is '
            'dropped (socket.io\'s pingTimeout).', _float_range(1, 3600)),
    Setting('drain_seconds', '5', 'On SIGTERM, how long /readyz answers 503 before the sockets are '
            'closed, so a load balancer stops sending new clients first (longer than its health '
            'check interval x fall count). 0 = close at once.', _float_range(0, 600)),
    Setting('log_level', 'INFO', 'DEBUG, INFO, WARNING or ERROR.', _log_level),
    Setting('journal_retention_hours', '24', 'How long changes stay in the journal (and a '
            'disconnected client can catch up).', _float_range(0.01, 24 * 365)),
    Setting('listener_check_seconds', '5', 'Idle time after which the LISTEN connection is probed '
            '(and the journal re-read, in case a notification was missed).', _float_range(0.2, 600)),
    Setting('listener_timeout_seconds', '5', 'How long a probe of the LISTEN connection may take '
            'before the connection is declared dead and replaced.', _float_range(0.2, 600)),
    Setting('listener_max_backoff_seconds', '30', 'Cap of the jittered exponential backoff between '
            'attempts to re-establish the LISTEN connection.', _float_range(0.1, 3600)),
    Setting('public_url', '', 'Externally reachable base URL of the sidecar (used to build the '
            'Calendly webhook URL), e.g. https://rt.example.com.', _str),
    Setting('calendly_api_url', 'https://api.calendly.com', 'Calendly API base URL.', _str),
    Setting('calendly_encryption_key', '', 'Key (at least 32 characters) that encrypts Calendly tokens '
            'and signing keys at rest; required once a Calendly connection exists.',
            _optional_key, secret=True, file_variant=True),
    Setting('calendly_poll_seconds', '300', 'Interval between two polls of each Calendly connection '
            '(a random jitter of up to 10% is added).', _int_range(5, 86400)),
    Setting('calendly_first_poll_seconds', '60', 'The first poll after start-up comes at a random '
            'point between 5 s and this many seconds (at most one interval), so replicas restarted '
            'together do not poll at once.', _int_range(5, 86400)),
    Setting('calendly_lookback_hours', '24', 'How far before the watermark each poll looks again.',
            _float_range(0, 24 * 90)),
    Setting('calendly_prospect_status', 'new', 'Status given to prospects created from a Calendly booking.',
            _str),
    Setting('calendly_webhook_max_bytes', '262144', 'Largest webhook body accepted, in bytes.',
            _int_range(1024, 16 * 1024 * 1024)),
)

Settings = dataclasses.make_dataclass(
    'Settings', [(s.name, Any) for s in SETTINGS], frozen=True,
    namespace={'__doc__': 'Frozen settings; build with load_settings().',
               '__repr__': lambda self: 'Settings(%s)' % ', '.join(
                   f'{s.name}=***' if s.secret and getattr(self, s.name) else
                   f'{s.name}={getattr(self, s.name)!r}' for s in SETTINGS)})


def _raw(setting: Setting, environ: Mapping[str, str]) -> Optional[str]:
    if setting.file_variant and environ.get(setting.env + '_FILE'):
        path = environ[setting.env + '_FILE']
        if environ.get(setting.env):
            raise ConfigError(f'{setting.env} and {setting.env}_FILE are both set (expected only one).')
        try:
            with open(path, encoding='utf-8') as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f'{setting.env}_FILE={path!r} cannot be read ({exc.strerror}).') from None
    return environ.get(setting.env)


def load_settings(environ: Optional[Mapping[str, str]] = None, *,
                  require_database: bool = True, require_auth: bool = True,
                  fill: Optional[Mapping[str, str]] = None, **overrides) -> 'Settings':
    """Build the settings from ``environ`` (default ``os.environ``).

    ``overrides`` (attribute name -> raw string) win over the environment;
    ``fill`` (same form) gives values to settings the environment leaves unset
    (the demo's throw-away secrets). ``require_auth=False`` skips the JWT
    checks, for commands that never verify a token (``install-sql``).
    """
    fill = fill or {}
    environ = os.environ if environ is None else environ
    known = {s.env for s in SETTINGS} | {s.env + '_FILE' for s in SETTINGS if s.file_variant}
    unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise ConfigError(f'{unknown[0]} is not a setting of crm-realtime (see .env.example for the list).')
    values = {}
    for s in SETTINGS:
        raw = overrides.get(s.name, _raw(s, environ))
        if (raw is None or raw == '') and s.name in fill:
            raw = fill[s.name]
        if raw is None or raw == '':
            if s.default is None:
                values[s.name] = None
                continue
            raw = s.default
        values[s.name] = s.parse(s.env, raw) if raw != '' else raw
    settings = Settings(**values)
    _check_consistency(settings, require_database, require_auth)
    return settings


def is_placeholder(value: str) -> bool:
    """A value copied from an example file unchanged ("change-me...", "changeme", "change me")."""
    squashed = ''.join(c for c in value.lower() if c.isalnum())
    return 'changeme' in squashed


def _check_consistency(s, require_database: bool, require_auth: bool) -> None:
    if require_database and not s.database_url:
        raise ConfigError('SIDECAR_DATABASE_URL is not set (expected postgresql://user@host:port/dbname).')
    if s.calendly_encryption_key and is_placeholder(s.calendly_encryption_key):
        raise ConfigError('SIDECAR_CALENDLY_ENCRYPTION_KEY is still the example\'s "change me" placeholder '
                          '(expected at least 32 characters of random key material).')
    if not require_auth:
        return
    hmac_algs = [a for a in s.jwt_algorithms if a.startswith('HS')]
    key_algs = [a for a in s.jwt_algorithms if not a.startswith('HS')]
    if hmac_algs and key_algs:
        raise ConfigError(f'SIDECAR_JWT_ALGORITHMS mixes HMAC and public-key algorithms '
                          f'({", ".join(s.jwt_algorithms)}); that invites key-confusion attacks, choose one family.')
    if hmac_algs and not s.jwt_secret:
        raise ConfigError('SIDECAR_JWT_SECRET is not set (expected the secret the CRM signs its HS* tokens with).')
    if hmac_algs and is_placeholder(s.jwt_secret):
        raise ConfigError('SIDECAR_JWT_SECRET is still the example\'s "change me" placeholder (expected the '
                          'secret the CRM signs its HS* tokens with).')
    if hmac_algs and len(s.jwt_secret.encode()) < 32:
        raise ConfigError('SIDECAR_JWT_SECRET is too short (expected at least 32 bytes for HS* signing).')
    if key_algs and not s.jwt_public_key:
        raise ConfigError('SIDECAR_JWT_PUBLIC_KEY is not set (expected a PEM public key for '
                          f'{", ".join(key_algs)}).')
    if key_algs and '-----BEGIN' not in s.jwt_public_key:
        raise ConfigError('SIDECAR_JWT_PUBLIC_KEY is not a PEM key (expected -----BEGIN PUBLIC KEY-----...).')
