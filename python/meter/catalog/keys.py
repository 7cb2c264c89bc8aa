"""Tenants and API keys.

A key is ``mk_live_`` + 43 base62 characters (256 random bits) + a 6-character checksum, in the spirit of GitHub's
tokens: the prefix lets secret scanners spot a leaked key, the checksum rejects garbage before any lookup. Only the
SHA-256 of a key is stored; the key itself is shown once. Lookups are by hash, then the stored hash is compared in
constant time. The tenant of a request comes from its key, never from the request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import zlib
from pathlib import Path
from typing import Literal

import msgspec
from rocksdict import Rdict

from meter.catalog.kv import scan
from meter.exceptions import AlreadyExists, InvalidInput, NotFound

__all__ = ["ApiKey", "KeyStore", "Scope", "new_key", "valid_checksum"]

Scope = Literal["ingest", "read", "export", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "export", "admin")
PREFIX = "mk_live_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY = 43  # base62 digits of 256 bits
_CHECK = 6


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK)


def new_key() -> str:
    body = _base62(secrets.randbits(256), _BODY)
    return PREFIX + body + _checksum(body)


def valid_checksum(key: str) -> bool:
    if not key.startswith(PREFIX) or len(key) != len(PREFIX) + _BODY + _CHECK:
        return False
    body, check = key[len(PREFIX) : -_CHECK], key[-_CHECK:]
    return hmac.compare_digest(_checksum(body), check)


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKey(msgspec.Struct, frozen=True):
    """A stored key: never the secret, only its hash and a short display prefix."""

    id: str
    tenant: str | None  # None for the bootstrap admin key, which belongs to no tenant
    scopes: list[Scope]
    display: str  # first characters, safe to log
    created_at: float
    revoked: bool = False


class Tenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: float


class KeyStore:
    """Tenants and key hashes in a rocksdict store of their own (not the usage store)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._db = Rdict(os.fspath(path))

    def close(self) -> None:
        self._db.close()

    # tenants

    def create_tenant(self, tenant_id: str, name: str = "") -> Tenant:
        if not tenant_id or len(tenant_id) > 64 or not all(c.isalnum() or c in "-_" for c in tenant_id):
            raise InvalidInput(f"tenant id must be 1-64 letters, digits, '-' or '_'; got {tenant_id!r}", "invalid_tenant")
        key = b"tenant/" + tenant_id.encode()
        if self._db.get(key) is not None:
            raise AlreadyExists(f"tenant '{tenant_id}' already exists", "already_exists")
        tenant = Tenant(id=tenant_id, name=name or tenant_id, created_at=time.time())
        self._db[key] = msgspec.json.encode(tenant)
        return tenant

    def get_tenant(self, tenant_id: str) -> Tenant:
        raw = self._db.get(b"tenant/" + tenant_id.encode())
        if raw is None:
            raise NotFound(f"tenant '{tenant_id}' was not found", "not_found")
        return msgspec.json.decode(raw, type=Tenant)

    def list_tenants(self) -> list[Tenant]:
        return list(scan(self._db, b"tenant/", Tenant))

    # keys

    def create_key(self, tenant: str | None, scopes: list[Scope], *, secret: str | None = None) -> tuple[str, ApiKey]:
        """Returns the secret (shown once) and the stored record."""
        if not scopes or any(s not in SCOPES for s in scopes):
            raise InvalidInput(f"scopes must be a non-empty list of {list(SCOPES)}; got {scopes!r}", "invalid_scopes")
        if tenant is not None:
            self.get_tenant(tenant)
        secret = secret or new_key()
        record = ApiKey(
            id=secrets.token_hex(8), tenant=tenant, scopes=sorted(set(scopes)), display=secret[: len(PREFIX) + 4],
            created_at=time.time(),
        )
        self._db[b"keyhash/" + _hash(secret)] = msgspec.json.encode(record)
        self._db[b"keyid/" + record.id.encode()] = _hash(secret)
        return secret, record

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key record for a presented secret, or None. Garbage is refused before any lookup."""
        if not valid_checksum(secret):
            return None
        digest = _hash(secret)
        raw = self._db.get(b"keyhash/" + digest)
        if raw is None:
            return None
        record = msgspec.json.decode(raw, type=ApiKey)
        stored = self._db.get(b"keyid/" + record.id.encode())
        if stored is None or not hmac.compare_digest(stored, digest) or record.revoked:
            return None
        return record

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        out = []
        for record in scan(self._db, b"keyhash/", ApiKey):
            if tenant is None or record.tenant == tenant:
                out.append(record)
        return sorted(out, key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> None:
        digest = self._db.get(b"keyid/" + key_id.encode())
        if digest is None:
            raise NotFound(f"key '{key_id}' was not found", "not_found")
        record = msgspec.json.decode(self._db[b"keyhash/" + digest], type=ApiKey)
        self._db[b"keyhash/" + digest] = msgspec.json.encode(msgspec.structs.replace(record, revoked=True))

    def has_admin_key(self) -> bool:
        return any(k.tenant is None and not k.revoked for k in self.list_keys())
