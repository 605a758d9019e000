"""Verify the CRM's JWTs.

A refusal carries two texts: ``AuthError.reason`` (a stable code the client
gets in ``connect_error``'s ``error.data.reason``) and ``AuthError.detail``
(a precise sentence for the log). The token itself is never logged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jwt

#: What every refused client sees as ``error.message`` (the SPA contract).
CLIENT_MESSAGE = 'Authentication error'


class AuthError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def client_data(self) -> dict:
        return {'reason': self.reason}


@dataclasses.dataclass(frozen=True)
class Identity:
    organization_id: str
    user_id: Optional[str]
    expires_at: float          # unix seconds


def _claim_as_id(value: Any) -> Optional[str]:
    # Ids compare as strings: a claim 7 matches a column value "7".
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)):
        text = str(value).strip()
        return text or None
    return None


class TokenVerifier:
    """Checks signature, algorithm allow-list, ``exp`` and the configured claims."""

    def __init__(self, settings):
        self._algorithms = list(settings.jwt_algorithms)
        self._key = (settings.jwt_secret if self._algorithms[0].startswith('HS')
                     else settings.jwt_public_key)
        self._org_claim = settings.jwt_org_claim
        self._user_claim = settings.jwt_user_claim
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway_seconds

    def verify(self, token: Any) -> Identity:
        if not token or not isinstance(token, str):
            raise AuthError('missing_token', 'no token in auth.token or Authorization header')
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise AuthError('malformed_token', f'token is not a JWT ({exc})') from None
        alg = header.get('alg')
        if alg not in self._algorithms:
            raise AuthError('algorithm_not_allowed',
                            f'token algorithm {alg!r} is not in the allow-list {self._algorithms}')
        try:
            claims = jwt.decode(
                token, self._key, algorithms=self._algorithms,
                audience=self._audience, issuer=self._issuer, leeway=self._leeway,
                # sub is checked below like any id claim (a CRM may sign {"sub": 7});
                # pyjwt >= 2.10 would refuse anything but a string
                options={'require': ['exp'], 'verify_aud': self._audience is not None,
                         'verify_sub': False})
        except jwt.ExpiredSignatureError:
            raise AuthError('token_expired', 'token expired') from None
        except jwt.InvalidSignatureError:
            raise AuthError('invalid_signature', 'token signature does not verify') from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f'missing_claim:{exc.claim}', f'token has no {exc.claim} claim') from None
        except jwt.InvalidAudienceError:
            raise AuthError('invalid_audience', 'token audience is not the expected one') from None
        except jwt.InvalidIssuerError:
            raise AuthError('invalid_issuer', 'token issuer is not the expected one') from None
        except jwt.ImmatureSignatureError:
            raise AuthError('token_not_yet_valid', 'token nbf/iat is in the future') from None
        except jwt.PyJWTError as exc:
            raise AuthError('invalid_token', f'token rejected: {exc.__class__.__name__}: {exc}') from None
        return self._identity(claims)

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        org = _claim_as_id(claims.get(self._org_claim))
        if org is None:
            raise AuthError(f'missing_claim:{self._org_claim}',
                            f'token has no usable {self._org_claim} claim')
        raw_user = claims.get(self._user_claim)
        user = _claim_as_id(raw_user)
        if raw_user is not None and (isinstance(raw_user, bool) or not isinstance(raw_user, (int, str))):
            raise AuthError('invalid_token',
                            f'token {self._user_claim} claim is a {type(raw_user).__name__}, '
                            'not a string or an integer')
        try:
            exp = float(claims['exp'])
        except (TypeError, ValueError):
            raise AuthError('invalid_token', 'token exp is not a number') from None
        return Identity(organization_id=org, user_id=user, expires_at=exp)


def bearer_token(headers: Mapping[str, str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer`` header, if any."""
    value = headers.get('HTTP_AUTHORIZATION') or headers.get('Authorization') or ''
    scheme, _, token = value.partition(' ')
    return token.strip() if scheme.lower() == 'bearer' and token.strip() else None
