"""Standard Webhooks v1 signatures, as the ``standardwebhooks`` and ``svix`` libraries verify them.

The spec: https://www.standardwebhooks.com/. A secret is ``whsec_`` followed by the base64 of 32 random bytes. A
delivery carries three headers: ``webhook-id`` (the event's id, the same on every retry: receivers dedupe on it),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``: ``v1,<base64 of
HMAC-SHA256("{id}.{timestamp}.{body}")>`` keyed with the secret's decoded bytes, several space-separated while a
rotated secret is still honoured, so a receiver that still holds the old secret verifies too.

Invariants: the signed body is exactly the bytes sent; a secret is never logged or listed (only the endpoint's
record holds it, and only the answers that create or rotate it show it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable

__all__ = ["SECRET_PREFIX", "headers", "new_secret", "sign", "valid_secret"]

SECRET_PREFIX = "whsec_"
#: Random bytes in a new secret (the spec asks for 24 to 64).
SECRET_BYTES = 32


def new_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def valid_secret(secret: str) -> bool:
    """Whether ``secret`` is ``whsec_`` + base64 of 24 to 64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except ValueError:
        return False
    return 24 <= len(key) <= 64


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` of one delivery: HMAC-SHA256 of ``{msg_id}.{timestamp}.{body}`` with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, signed with every secret given (the current one first)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }
