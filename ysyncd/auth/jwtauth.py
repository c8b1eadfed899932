"""``--auth jwt``: signed tokens carry their own grant.

HS256 with ``--jwt-secret-file`` (the file holds the raw secret) or RS256
with ``--jwt-public-key-file`` (a PEM). Claims:

- ``exp`` (required): expiry, seconds since the epoch;
- ``rooms`` (required): a list of glob patterns over the room name;
- ``read_only`` (optional, default false);
- ``sub`` (optional): the user, for logs.

Any token that fails verification gets 401; a good token whose ``rooms`` do
not match the room gets 403. PyJWT does the verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.http11 import Request

from ysyncd.auth.base import Globs, Grant, LocalAuthorizer, require_token
from ysyncd.errors import Unauthorized

__all__ = ["JwtAuth"]

# Clock skew tolerated between the issuer and this server, in seconds.
LEEWAY_S = 5


class JwtAuth(LocalAuthorizer):
    # A token cannot be revoked, and its exp bounds the connect, not the session.
    rechecks = False

    def __init__(self, *, secret_file: Path | None, public_key_file: Path | None):
        if (secret_file is None) == (public_key_file is None):
            raise ValueError(
                "--auth jwt needs exactly one of --jwt-secret-file (HS256) and "
                "--jwt-public-key-file (RS256)"
            )
        self.key: bytes | rsa.RSAPublicKey
        if secret_file is not None:
            self.key = secret_file.read_bytes().strip()
            self.algorithm = "HS256"
            if len(self.key) < 32:
                raise ValueError("the JWT secret must be at least 32 bytes")
        else:
            assert public_key_file is not None
            pem = public_key_file.read_bytes()
            try:
                key = serialization.load_pem_public_key(pem)
            except ValueError as exc:
                raise ValueError(f"{public_key_file}: not a PEM public key") from exc
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError(f"{public_key_file}: not an RSA public key")
            self.key = key
            self.algorithm = "RS256"

    async def authorize(self, request: Request, room: str) -> Grant:
        try:
            claims = jwt.decode(
                require_token(request),
                self.key,
                algorithms=[self.algorithm],
                options={"require": ["exp"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            # PyJWT's messages name the failed check, never the token itself.
            raise Unauthorized(f"invalid token: {exc}") from None
        return _grant(claims).check(room)


def _grant(claims: dict[str, Any]) -> Grant:
    rooms, read_only = claims.get("rooms"), claims.get("read_only", False)
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise Unauthorized("invalid token: 'rooms' must be a list of strings")
    if not isinstance(read_only, bool):
        raise Unauthorized("invalid token: 'read_only' must be a boolean")
    user = claims.get("sub")
    return Grant(
        user if isinstance(user, str) else "jwt", Globs(tuple(rooms)), read_only
    )
