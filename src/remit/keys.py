"""API keys: admin keys for humans and tooling, agent keys that act as one agent only.

A key reads `rk_<key_id>_<secret>`. The key id is public (listings show it); the secret is
256 random bits and only its SHA-256 is stored, compared in constant time. Because the secret
is random rather than chosen by a person, a fast hash is as good as a slow one here.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from remit.errors import Forbidden, Unauthorized

KEY_PREFIX = "rk_"
_KEY_ID_BYTES = 8
_SECRET_BYTES = 32
_KEY_PATTERN = re.compile(r"^rk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


class Role(enum.Enum):
    ADMIN = "admin"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: one tenant, as an admin or as one agent."""

    tenant_id: str
    key_id: str
    role: Role
    agent: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs an admin key; an agent key can only act as its agent")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret: str

    @property
    def text(self) -> str:
        """The whole key, shown once."""
        return f"{KEY_PREFIX}{self.key_id}_{self.secret}"

    @property
    def secret_sha256(self) -> str:
        return hash_secret(self.secret)


def new_key(key_id: str | None = None) -> NewKey:
    """A fresh key (a rotation keeps the key id and draws a new secret)."""
    return NewKey(key_id or secrets.token_hex(_KEY_ID_BYTES), secrets.token_urlsafe(_SECRET_BYTES))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(text: str) -> tuple[str, str]:
    """(key_id, secret) of a key, or Unauthorized if it is not shaped like one."""
    match = _KEY_PATTERN.match(text)
    if match is None:
        raise Unauthorized("the API key is malformed (expected rk_<id>_<secret>)")
    return match.group(1), match.group(2)


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_sha256)


def display_prefix(key_id: str) -> str:
    """What listings show of a key: enough to recognise it, nothing to use it."""
    return f"{KEY_PREFIX}{key_id}_…"
