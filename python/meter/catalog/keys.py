"""Tenants and API keys.

A key is ``mk_live_`` + 43 base62 characters (256 random bits) + a 6-character checksum, in the spirit of GitHub's
tokens: the prefix lets secret scanners spot a leaked key, the checksum rejects garbage before any lookup. Only the
SHA-256 of a key is stored; the key itself is shown once. Lookups are by hash, then the stored hash is compared in
constant time. The tenant of a request comes from its key, never from the request.

Two kinds of key: an **operator** key belongs to no tenant (``tenant`` is None; the bootstrap key is one) and
administers the installation (tenants and their keys) but reads no tenant's data; a **tenant** key belongs to one
tenant, with scopes. The last live operator key cannot be revoked, so the operator cannot lock themselves out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
import zlib
from typing import Literal

import msgspec
from rocksdict import Rdict

from meter.catalog.kv import Store, scan
from meter.exceptions import AlreadyExists, InUse, InvalidInput, NotFound

__all__ = [
    "KEY_FORMAT",
    "ApiKey",
    "KeyBody",
    "KeyStore",
    "Scope",
    "TenantBody",
    "TenantKeyBody",
    "check_tenant_id",
    "new_key",
    "valid_checksum",
]

Scope = Literal["ingest", "read", "export", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "export", "admin")
PREFIX = "mk_live_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY = 43  # base62 digits of 256 bits
_CHECK = 6
#: What a key looks like, for error messages.
KEY_FORMAT = f"{PREFIX} followed by {_BODY + _CHECK} letters and digits (the last {_CHECK} a checksum)"


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


_TENANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_tenant_id(tenant_id: str) -> None:
    """Refuses a tenant id that is not 1-64 ASCII letters, digits, '-' or '_' (``invalid_tenant``).

    ASCII only: a tenant id names its directories in the Parquet export (meter.lake.layout), which takes no other
    letters, so a tenant the API accepts can always be exported.
    """
    if _TENANT_ID.fullmatch(tenant_id) is None:
        raise InvalidInput(
            f"tenant id must be 1-64 ASCII letters, digits, '-' or '_'; got {tenant_id!r}", "invalid_tenant"
        )


#: At most this many live keys are remembered (the memory is emptied when full): a few MB at most.
_KNOWN_KEYS = 10_000


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKey(msgspec.Struct, frozen=True):
    """A stored key: never the secret, only its hash and a short display prefix."""

    id: str
    tenant: str | None  # None for an operator key (the bootstrap key is one), which belongs to no tenant
    scopes: list[Scope]
    display: str  # first characters, safe to log
    created_at: float
    revoked: bool = False

    @property
    def operator(self) -> bool:
        return self.tenant is None


class Tenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: float


class TenantBody(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    name: str = ""


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/admin/keys`: a key of `tenant`, or (`"tenant": null`) an operator key."""

    tenant: str | None
    scopes: list[Scope] = msgspec.field(default_factory=list)  # required for a tenant's key


class TenantKeyBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/keys`: a key of the caller's own tenant."""

    scopes: list[Scope]


class KeyStore(Store):
    """Tenants and key hashes in a rocksdict store of their own (not the usage store)."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        super().__init__(path, read_only)
        self._lock = threading.Lock()
        # Live keys already authenticated, by digest: every request presents a key, and finding a known one in
        # memory spares the server a thread-pool hop for a disk read. Every write to a key empties it, and
        # `_key_writes` keeps a lookup that raced such a write from putting back what the write changed.
        self._known: dict[bytes, ApiKey] = {}
        self._key_writes = 0

    # tenants

    def create_tenant(self, tenant_id: str, name: str = "") -> Tenant:
        check_tenant_id(tenant_id)
        key = b"tenant/" + tenant_id.encode()
        with self._lock:
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
        if tenant is None:
            scopes = ["admin"]  # an operator key's reach comes from being one, not from scopes
        if not scopes or any(s not in SCOPES for s in scopes):
            raise InvalidInput(f"scopes must be a non-empty list of {list(SCOPES)}; got {scopes!r}", "invalid_scopes")
        if tenant is not None:
            self.get_tenant(tenant)
        if secret is not None and not valid_checksum(secret):
            raise InvalidInput(f"a key must be {KEY_FORMAT}; `meter admin-key new` makes one", "invalid_key")
        secret = secret or new_key()
        record = ApiKey(
            id=secrets.token_hex(8),
            tenant=tenant,
            scopes=sorted(set(scopes)),
            display=secret[: len(PREFIX) + 4],
            created_at=time.time(),
        )
        with self._lock:
            self._db[b"keyhash/" + _hash(secret)] = msgspec.json.encode(record)
            self._db[b"keyid/" + record.id.encode()] = _hash(secret)
            self._forget_keys()
        return secret, record

    def known(self, secret: str) -> ApiKey | None:
        """The live record of a key authenticated before, from memory only (never a disk read), else None."""
        return self._known.get(_hash(secret)) if valid_checksum(secret) else None

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key record for a presented secret, or None. Garbage is refused before any lookup."""
        if not valid_checksum(secret):
            return None
        digest = _hash(secret)
        writes = self._key_writes
        raw = self._db.get(b"keyhash/" + digest)
        if raw is None:
            return None
        record = msgspec.json.decode(raw, type=ApiKey)
        stored = self._db.get(b"keyid/" + record.id.encode())
        if stored is None or not hmac.compare_digest(stored, digest) or record.revoked:
            return None
        with self._lock:
            if self._key_writes == writes:  # no key was written while this one was read
                if len(self._known) >= _KNOWN_KEYS:
                    self._known.clear()
                self._known[digest] = record
        return record

    def session_token(self, key: ApiKey, expires: int) -> str:
        """A token standing for ``key`` until ``expires`` (Unix seconds): a Stripe meter event session's.

        Signed with the key's stored hash, which only the server knows: revoking the key ends its sessions.
        """
        return f"mst_{key.id}.{expires}.{self._session_mac(key.id, expires)}"

    def session_key(self, token: str, now: float) -> ApiKey | Literal["expired"] | None:
        """The live key ``token`` stands for; ``"expired"`` once its time is past; None when it is no token."""
        found = re.fullmatch(r"mst_([0-9a-f]{16})\.(\d{1,12})\.([0-9a-f]{64})", token)
        if found is None:
            return None
        key_id, expires, mac = found.group(1), int(found.group(2)), found.group(3)
        if not hmac.compare_digest(self._session_mac(key_id, expires), mac):
            return None
        try:
            key = self.get_key(key_id)
        except NotFound:
            return None
        if key.revoked:
            return None
        return "expired" if now >= expires else key

    def _session_mac(self, key_id: str, expires: int) -> str:
        digest = self._db.get(b"keyid/" + key_id.encode())
        secret = digest if isinstance(digest, bytes) else secrets.token_bytes(32)  # no key: a MAC nothing matches
        return hmac.new(secret, f"session/{key_id}/{expires}".encode(), hashlib.sha256).hexdigest()

    def list_keys(self, tenant: str | None = None, *, operators: bool = False) -> list[ApiKey]:
        """Every key (the operator's view), or only the keys of `tenant`, or (`operators`) only operator keys."""
        out = []
        for record in scan(self._db, b"keyhash/", ApiKey):
            if operators:
                if record.tenant is None:
                    out.append(record)
            elif tenant is None or record.tenant == tenant:
                out.append(record)
        return sorted(out, key=lambda r: r.created_at)

    def get_key(self, key_id: str) -> ApiKey:
        digest = self._db.get(b"keyid/" + key_id.encode())
        raw = self._db.get(b"keyhash/" + digest) if digest is not None else None
        if raw is None:
            raise NotFound(f"key '{key_id}' was not found", "not_found")
        record = msgspec.json.decode(raw, type=ApiKey)
        if record.id != key_id:  # the secret was stored again under a new id (METER_ADMIN_KEY after a revocation)
            raise NotFound(f"key '{key_id}' was not found", "not_found")
        return record

    def revoke(self, key_id: str, *, tenant: str | None = None, operator: bool = False) -> ApiKey:
        """Revokes a key.

        A tenant (`tenant`) revokes only its own keys: another's is not found. The operator (`operator`) revokes any
        key but the last live operator key (409 `last_operator_key`).
        """
        if not operator and tenant is None:
            raise ValueError("revoke needs the tenant whose key it is, or operator=True")
        with self._lock:  # check-then-revoke: two concurrent revocations must not both see the other key live
            return self._revoke(key_id, tenant, operator)

    def _revoke(self, key_id: str, tenant: str | None, operator: bool) -> ApiKey:
        record = self.get_key(key_id)
        if not operator and record.tenant != tenant:
            raise NotFound(f"key '{key_id}' was not found", "not_found")
        if record.revoked:
            return record
        others = [k for k in self.list_keys(operators=True) if not k.revoked and k.id != key_id]
        if record.tenant is None and not others:
            raise InUse(
                f"key '{key_id}' is the last operator key: create another (POST /v1/admin/keys with "
                '{"tenant": null}) before revoking it, or use `meter admin-key reset`',
                "last_operator_key",
            )
        revoked = msgspec.structs.replace(record, revoked=True)
        self._db[b"keyhash/" + _hash_of(self._db, key_id)] = msgspec.json.encode(revoked)
        self._forget_keys()
        return revoked

    def reset_operator_keys(self) -> tuple[str, ApiKey]:
        """Revokes every operator key and creates a new one (`meter admin-key reset`, with the server stopped)."""
        with self._lock:
            for record in self.list_keys(operators=True):
                if not record.revoked:
                    self._db[b"keyhash/" + _hash_of(self._db, record.id)] = msgspec.json.encode(
                        msgspec.structs.replace(record, revoked=True)
                    )
            self._forget_keys()
        return self.create_key(None, ["admin"])

    def _forget_keys(self) -> None:
        """Empty the memory of live keys; called, holding the lock, by every write to a key, after the write."""
        self._key_writes += 1
        self._known.clear()

    def has_admin_key(self) -> bool:
        return any(not k.revoked for k in self.list_keys(operators=True))


def _hash_of(db: Rdict, key_id: str) -> bytes:
    digest = db.get(b"keyid/" + key_id.encode())
    if digest is None:
        raise NotFound(f"key '{key_id}' was not found", "not_found")
    return bytes(digest)
