"""Identity: HS256 JWTs carrying the user id and the room grants vouched for by the deployment."""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt

ROLES = ("owner", "member")


class AuthError(Exception):
    """The request carries no usable identity (401)."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    name: str | None = None
    guest: bool = False
    grants: Mapping[str, str] = field(default_factory=dict)  # roomId -> "owner" | "member"


def canonical_uuid(value: object) -> str | None:
    """The lower-case canonical form of a UUID string, or None when it is not one."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def read_secret_file(data_dir: Path) -> str | None:
    """The secret kept in <data_dir>/jwt_secret, if there is one."""
    try:
        return (data_dir / "jwt_secret").read_text().strip() or None
    except FileNotFoundError:
        return None


def load_or_create_secret(configured: str, data_dir: Path) -> str:
    """The configured secret, else the one kept in <data_dir>/jwt_secret (created 0600)."""
    if configured:
        return configured
    secret = read_secret_file(data_dir)
    if secret:
        return secret
    path = data_dir / "jwt_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)
    return secret


class TokenAuthority:
    """Verifies (and, for the CLI and tests, mints) the tokens of one secret."""

    def __init__(self, secret: str, leeway_seconds: int = 30) -> None:
        self._secret = secret
        self._leeway = leeway_seconds

    def mint(
        self,
        user_id: str,
        *,
        name: str | None = None,
        guest: bool = False,
        rooms: Mapping[str, str] | None = None,
        ttl_seconds: int = 3600,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
        if name is not None:
            claims["name"] = name
        if guest:
            claims["guest"] = True
        if rooms:
            claims["rooms"] = dict(rooms)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not valid yet") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        user_id = canonical_uuid(claims.get("sub"))
        if user_id is None:
            raise AuthError("token subject must be a UUID")
        name = claims.get("name")
        if name is not None and not isinstance(name, str):
            raise AuthError("token name must be a string")
        guest = claims.get("guest", False)
        if not isinstance(guest, bool):
            raise AuthError("token guest must be a boolean")
        rooms = claims.get("rooms", {})
        if not isinstance(rooms, dict):
            raise AuthError("token rooms must be an object")
        grants: dict[str, str] = {}
        for room_id, role in rooms.items():
            rid = canonical_uuid(room_id)
            if rid is None or role not in ROLES:
                raise AuthError("token rooms must map room UUIDs to owner or member")
            grants[rid] = role
        return Principal(user_id=user_id, name=name, guest=guest, grants=grants)
