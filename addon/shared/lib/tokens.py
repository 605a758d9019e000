"""Mint the short-lived JWT a logged-in ERP user connects to the sidecar with.

Claims, matching the sidecar's defaults (``sidecar/auth.py``):

* ``sub``              the ERP user id, as a string (RFC 7519; recent PyJWT
                       versions refuse a numeric ``sub``);
* ``organization_id``  the user's *current* company id (the sidecar's
                       ``SIDECAR_JWT_ORG_CLAIM``);
* ``exp``              now + the configured lifetime.

No ``iat``/``nbf``: the sidecar checks those against its own clock with no
leeway by default, so an ERP host whose clock runs a second ahead would mint
tokens that are refused. ``exp`` alone bounds the token.
"""
from __future__ import annotations

import time
from typing import Any, Dict, NamedTuple, Optional

import jwt

from .config import RealtimeConfig

ALGORITHM = 'HS256'

#: What the token route answers when the addon is not configured (or the user
#: may not receive CRM events); the web client then stays offline.
DISABLED: Dict[str, Any] = {'enabled': False}


class MintedToken(NamedTuple):
    token: str
    expires_at: int          # unix seconds


def mint_token(secret: str, user_id: int, organization_id: int, lifetime: int,
               *, now: Optional[float] = None) -> MintedToken:
    """Sign a token for ``user_id`` in ``organization_id``, valid ``lifetime`` seconds."""
    if not user_id or not organization_id:
        # a token without them would be refused by the sidecar anyway; fail here, loudly
        raise ValueError('a sidecar token needs a user id and an organization id')
    expires_at = int((time.time() if now is None else now) + lifetime)
    claims = {'sub': str(user_id), 'organization_id': organization_id, 'exp': expires_at}
    return MintedToken(jwt.encode(claims, secret, algorithm=ALGORITHM), expires_at)


def token_response(config: RealtimeConfig, user_id: int, organization_id: int,
                   *, now: Optional[float] = None) -> Dict[str, Any]:
    """The token route's JSON answer: everything the web client needs to connect."""
    minted = mint_token(config.jwt_secret, user_id, organization_id, config.token_lifetime, now=now)
    return {
        'enabled': True,
        'url': config.sidecar_url,
        'token': minted.token,
        'expires_at': minted.expires_at,
        'organization_id': organization_id,
    }
