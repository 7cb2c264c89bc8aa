"""Tenants' API keys in the cluster's key-value store, so that every edge authenticates against the same keys.

As in ``meter.catalog.keys``: a key is shown once, stored only as its SHA-256 (the KV key ``key-<hex>``, so a lookup
compares digests, never secrets), and refused before any lookup when its checksum is wrong. An edge remembers a key it
authenticated for ``REMEMBER_S`` seconds: a revocation reaches every edge within that time.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from meter.catalog.keys import SCOPES, ApiKey, Scope, check_tenant_id, new_key, valid_checksum
from meter.cluster.runner import Runner
from meter.cluster.settings import CATALOG, bucket_keys
from meter.exceptions import InvalidInput, NotFound

__all__ = ["REMEMBER_S", "ClusterKeys", "create_key", "revoke_key", "tenants"]

#: How long an edge trusts a key it authenticated before it reads it again.
REMEMBER_S = 10.0


#: A tenant's mark in the catalog bucket, ``tenant.<id>``: one key per tenant, put with its first key.
_TENANT = "tenant"


def _kv_key(secret: str) -> str:
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()


async def create_key(catalog: KeyValue, tenant: str, scopes: list[Scope]) -> tuple[str, ApiKey]:
    """A new key of ``tenant``: the secret (shown once) and the stored record."""
    check_tenant_id(tenant)
    if not scopes or any(s not in SCOPES for s in scopes):
        raise InvalidInput(f"scopes must be a non-empty list of {list(SCOPES)}; got {scopes!r}", "invalid_scopes")
    secret = new_key()
    record = ApiKey(
        id=secrets.token_hex(8),
        tenant=tenant,
        scopes=sorted(set(scopes)),
        display=secret[:12],
        created_at=time.time(),
    )
    await catalog.create(_kv_key(secret), msgspec.json.encode(record))
    await catalog.put(f"keyid-{record.id}", _kv_key(secret).encode())
    await catalog.put(f"{_TENANT}.{tenant}", b"")
    return secret, record


async def tenants(js: JetStreamContext) -> list[str]:
    """Every tenant a key was ever created for (what a worker exports), as ``KeyStore.list_tenants`` on one node."""
    return sorted(k.removeprefix(f"{_TENANT}.") for k in await bucket_keys(js, CATALOG, _TENANT))


async def revoke_key(catalog: KeyValue, key_id: str) -> None:
    try:
        entry = await catalog.get(f"keyid-{key_id}")
        await catalog.delete((entry.value or b"").decode())
    except (NotFoundError, BadRequestError):
        raise NotFound(f"key {key_id!r} was not found", "not_found") from None


class ClusterKeys:
    """The key lookups an edge's requests make (``known``, ``authenticate``), over the catalog bucket."""

    def __init__(self, catalog: KeyValue, run: Runner) -> None:
        self.catalog, self.run = catalog, run
        self._known: dict[str, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()

    def known(self, secret: str) -> ApiKey | None:
        if not valid_checksum(secret):
            return None
        with self._lock:
            found = self._known.get(_kv_key(secret))
        return found[0] if found and found[1] > time.monotonic() else None

    def authenticate(self, secret: str) -> ApiKey | None:
        if not valid_checksum(secret):
            return None
        name = _kv_key(secret)
        try:
            entry = self.run(self.catalog.get(name))
        except NotFoundError:
            return None
        record = msgspec.json.decode(entry.value or b"", type=ApiKey)
        if record.revoked or record.tenant is None:
            return None
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[name] = (record, time.monotonic() + REMEMBER_S)
        return record
