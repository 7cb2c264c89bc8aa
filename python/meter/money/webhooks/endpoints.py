"""Webhook endpoints: where a tenant's events go, which types, and the secret that signs them.

An endpoint is a URL (checked by :mod:`~meter.money.webhooks.guard` when it is registered and at every delivery),
the event types it wants (``None``: every type), whether it is enabled, and a description. Its signing secret is
made by the server, shown once in the answer that creates it (and in the one that rotates it), and otherwise never
leaves the store: every listing is an :class:`EndpointView`, which has no secret field.

States: ``enabled``; ``disabled`` (by the tenant: no deliveries are made for it); ``failing`` (by the delivery
worker, when a delivery's retry window ran out: automatic delivery stops until the tenant enables it again, and the
events in between are recorded as failed deliveries that ``replay`` re-sends).

Rotation: the new secret signs at once; the previous one keeps signing beside it (two ``v1,`` signatures) for
``PREVIOUS_SECRET_VALID``, so receivers can switch without losing a delivery.

Invariants: an endpoint only receives events emitted after it was created (``after_seq``); a tenant has at most
``MAX_ENDPOINTS``; every write goes through ``InvoiceStore.transaction`` (one synced batch under the tenant's lock).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec

from meter.billing.store import InvoiceStore
from meter.exceptions import InvalidInput, NotFound
from meter.money.events import EVENT_TYPES, EventType
from meter.money.webhooks import records
from meter.money.webhooks.guard import MAX_URL, check_url, resolve
from meter.money.webhooks.signing import new_secret

__all__ = [
    "MAX_ENDPOINTS",
    "PREVIOUS_SECRET_VALID",
    "CreatedEndpoint",
    "Endpoint",
    "EndpointBody",
    "EndpointStatus",
    "EndpointUpdate",
    "EndpointView",
    "RotatedSecret",
    "create",
    "delete",
    "get",
    "list_endpoints",
    "load",
    "of_tenant",
    "rotate_secret",
    "tenants",
    "update",
]

MAX_ENDPOINTS = 20
PREVIOUS_SECRET_VALID = timedelta(hours=24)

EndpointStatus = Literal["enabled", "disabled", "failing"]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL, description="An https URL (see the guard)")]
Description = Annotated[str, msgspec.Meta(max_length=500)]
Types = Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES))]


class Endpoint(msgspec.Struct, kw_only=True):
    """The stored endpoint (``endpoint/<tenant>/<id>``), its secrets included: never answered as it is."""

    id: str
    url: str
    types: list[str] | None = None
    enabled: bool = True
    failing_since: datetime | None = None
    description: str = ""
    created_at: datetime
    updated_at: datetime
    #: The outbox seq when it was created: it receives only later events.
    after_seq: int = 0
    secret: str
    previous_secret: str | None = None
    previous_secret_until: datetime | None = None

    @property
    def status(self) -> EndpointStatus:
        if not self.enabled:
            return "disabled"
        return "failing" if self.failing_since is not None else "enabled"

    def wants(self, event_type: str, seq: int) -> bool:
        """Whether an event of this type and seq is delivered here (its state aside)."""
        return seq > self.after_seq and (self.types is None or event_type in self.types)

    def secrets(self, now: datetime) -> list[str]:
        """The secrets that sign a delivery made at ``now``: the current one, and the previous one while valid."""
        if self.previous_secret and self.previous_secret_until is not None and now < self.previous_secret_until:
            return [self.secret, self.previous_secret]
        return [self.secret]

    def view(self) -> EndpointView:
        return EndpointView(
            id=self.id,
            url=self.url,
            types=self.types,
            status=self.status,
            enabled=self.enabled,
            failing_since=self.failing_since,
            description=self.description,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


class EndpointView(msgspec.Struct, kw_only=True):
    """An endpoint as the API shows it: never its secret.

    ``status`` is ``enabled``, ``disabled`` (by the tenant) or ``failing`` (a delivery's retry window ran out:
    automatic delivery stopped until it is enabled again).
    """

    id: str
    url: str
    #: The event types it receives; null: every type.
    types: list[str] | None
    status: EndpointStatus
    enabled: bool
    failing_since: datetime | None
    description: str
    created_at: datetime
    updated_at: datetime


class CreatedEndpoint(EndpointView, kw_only=True):
    """A new endpoint, with its signing secret: shown this once (rotate it to get a new one)."""

    secret: str


class RotatedSecret(msgspec.Struct):
    """A new signing secret, shown once; the previous one still signs beside it until ``previous_valid_until``."""

    id: str
    secret: str
    previous_valid_until: datetime


class EndpointBody(msgspec.Struct, forbid_unknown_fields=True):
    """A new endpoint. ``types`` null (or absent): every event type."""

    url: Url
    types: Types | None = None
    enabled: bool = True
    description: Description = ""


class EndpointUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """What to change of an endpoint; a field left out stays as it is. ``enabled: true`` also ends ``failing``."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    types: Types | None | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


def _check_types(types: list[EventType] | None) -> list[str] | None:
    """The types in their canonical order, once each (the body's schema refused unknown ones and an empty list)."""
    if types is None:
        return None
    return sorted(set(types), key=EVENT_TYPES.index)


def _check_url(url: str, allow_private: bool) -> None:
    """The guard's checks, resolution included (blocking: this module runs on the thread pool)."""
    resolve(check_url(url, allow_private), allow_private)


def _new_id() -> str:
    return "we_" + secrets.token_hex(12)


def of_tenant(store: InvoiceStore, tenant: str) -> list[Endpoint]:
    """The tenant's endpoints, in the order they were created."""
    found = [msgspec.json.decode(v, type=Endpoint) for _, v in records.scan(store, records.endpoint_key(tenant))]
    return sorted(found, key=lambda e: (e.created_at, e.id))


def tenants(store: InvoiceStore) -> list[str]:
    """The tenants the delivery worker visits, in id order.

    Those with an endpoint, or with deliveries: pending ones of deleted endpoints included, which it then fails.
    """
    return sorted(set(records.tenants_under(store, "endpoint/")) | set(records.tenants_under(store, "delivery/")))


def load(store: InvoiceStore, tenant: str, endpoint_id: str) -> Endpoint | None:
    raw = records.read(store, records.endpoint_key(tenant, endpoint_id))
    return None if raw is None else msgspec.json.decode(raw, type=Endpoint)


def _existing(store: InvoiceStore, tenant: str, endpoint_id: str) -> Endpoint:
    endpoint = load(store, tenant, endpoint_id)
    if endpoint is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}; GET /v1/webhook-endpoints lists them")
    return endpoint


def list_endpoints(store: InvoiceStore, tenant: str) -> list[EndpointView]:
    return [e.view() for e in of_tenant(store, tenant)]


def get(store: InvoiceStore, tenant: str, endpoint_id: str) -> EndpointView:
    return _existing(store, tenant, endpoint_id).view()


def create(
    store: InvoiceStore, tenant: str, body: EndpointBody, allow_private: bool, now: datetime | None = None
) -> CreatedEndpoint:
    """Registers an endpoint (its URL checked and resolved first); the answer holds its secret, shown once."""
    types = _check_types(body.types)
    check_url(body.url, allow_private)
    _room(store, tenant)
    _check_url(body.url, allow_private)  # resolves: outside the tenant's lock
    now = now or datetime.now(UTC)
    with store.transaction(tenant, now) as change:
        existing = _room(store, tenant)  # again, under the lock: two creates at once never make 21
        last = records.last_key(store, records.outbox_key(tenant))
        after_seq = records.seq_of(last) if last is not None else 0
        if not existing:
            # The first endpoint: the worker has nothing to fan out before it, so it starts from now rather than
            # read the tenant's whole outbox.
            change.put(records.cursor_key(tenant), str(after_seq).encode())
        endpoint = Endpoint(
            id=_new_id(),
            url=body.url,
            types=types,
            enabled=body.enabled,
            description=body.description,
            created_at=now,
            updated_at=now,
            after_seq=after_seq,
            secret=new_secret(),
        )
        change.put(records.endpoint_key(tenant, endpoint.id), msgspec.json.encode(endpoint))
    return CreatedEndpoint(**msgspec.structs.asdict(endpoint.view()), secret=endpoint.secret)


def _room(store: InvoiceStore, tenant: str) -> list[Endpoint]:
    """The tenant's endpoints, if there is room for one more (else 400 ``too_many_endpoints``)."""
    existing = of_tenant(store, tenant)
    if len(existing) >= MAX_ENDPOINTS:
        raise InvalidInput(
            f"the tenant has {MAX_ENDPOINTS} webhook endpoints, the limit; delete one first (an endpoint can "
            "receive several event types)",
            code="too_many_endpoints",
        )
    return existing


def update(
    store: InvoiceStore,
    tenant: str,
    endpoint_id: str,
    body: EndpointUpdate,
    allow_private: bool,
    now: datetime | None = None,
) -> EndpointView:
    """Changes what ``body`` gives; a new URL is checked as at registration; enabling ends ``failing``."""
    types = _check_types(body.types) if body.types is not msgspec.UNSET else None
    if body.url is not msgspec.UNSET:
        check_url(body.url, allow_private)
        _existing(store, tenant, endpoint_id)
        _check_url(body.url, allow_private)
    now = now or datetime.now(UTC)
    with store.transaction(tenant, now) as change:
        endpoint = _existing(store, tenant, endpoint_id)
        if body.url is not msgspec.UNSET:
            endpoint.url = body.url
        if body.types is not msgspec.UNSET:
            endpoint.types = types
        if body.description is not msgspec.UNSET:
            endpoint.description = body.description
        if body.enabled is not msgspec.UNSET:
            endpoint.enabled = body.enabled
            if body.enabled:
                endpoint.failing_since = None
        endpoint.updated_at = now
        change.put(records.endpoint_key(tenant, endpoint_id), msgspec.json.encode(endpoint))
    return endpoint.view()


def delete(store: InvoiceStore, tenant: str, endpoint_id: str) -> None:
    """Deletes the endpoint; its pending deliveries fail when due (its delivery log stays)."""
    with store.transaction(tenant) as change:
        _existing(store, tenant, endpoint_id)
        change.delete(records.endpoint_key(tenant, endpoint_id))


def rotate_secret(store: InvoiceStore, tenant: str, endpoint_id: str, now: datetime | None = None) -> RotatedSecret:
    """A new secret, shown once; the current one keeps signing beside it for ``PREVIOUS_SECRET_VALID``."""
    now = now or datetime.now(UTC)
    with store.transaction(tenant, now) as change:
        endpoint = _existing(store, tenant, endpoint_id)
        endpoint.previous_secret, endpoint.secret = endpoint.secret, new_secret()
        endpoint.previous_secret_until = now + PREVIOUS_SECRET_VALID
        endpoint.updated_at = now
        change.put(records.endpoint_key(tenant, endpoint_id), msgspec.json.encode(endpoint))
    return RotatedSecret(endpoint_id, endpoint.secret, endpoint.previous_secret_until)
