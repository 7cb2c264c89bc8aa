"""Outgoing webhooks: the tenant's endpoints, the outbox events, the delivery log and replays.

Invariants: the tenant is the key's, so another tenant's endpoint, event or delivery is a 404, never seen or
replayed; writes need the ``admin`` scope, reads ``read``; a secret is in the answers that create or rotate it and
nowhere else; every store call (and the URL guard's DNS lookup) runs on the thread pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from meter.billing.store import InvoiceStore
from meter.money.events import EVENT_TYPES, Event
from meter.money.webhooks import deliveries, endpoints
from meter.money.webhooks.deliveries import (
    Delivery,
    DeliveryPage,
    EventPage,
    EventReplayBody,
    ReplayBody,
    Replayed,
)
from meter.money.webhooks.endpoints import CreatedEndpoint, EndpointBody, EndpointUpdate, EndpointView, RotatedSecret
from meter.server.context import Context, Unavailable, opened
from meter.server.http import Answer, Request
from meter.server.models import Deleted
from meter.server.table import LIMIT, TEXT, Body, Param, PathParam, Route, enum

__all__ = ["ROUTES"]


def _store(ctx: Context) -> InvoiceStore:
    store = opened(ctx.invoices)
    if isinstance(store, Unavailable):
        store.transaction  # noqa: B018 - any attribute of Unavailable is the 503 store_unavailable
    return cast(InvoiceStore, store)


def _wake(ctx: Context) -> None:
    if ctx.webhooks is not None:
        ctx.webhooks.wake()


async def create_endpoint(ctx: Context, request: Request, body: EndpointBody) -> Answer:
    allow = ctx.webhook_settings.allow_private
    return 201, await ctx.call(endpoints.create, _store(ctx), request.tenant, body, allow), {}


async def list_endpoints(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(endpoints.list_endpoints, _store(ctx), request.tenant), {}


async def get_endpoint(ctx: Context, request: Request, endpoint_id: str) -> Answer:
    return 200, await ctx.call(endpoints.get, _store(ctx), request.tenant, endpoint_id), {}


async def update_endpoint(ctx: Context, request: Request, endpoint_id: str, body: EndpointUpdate) -> Answer:
    allow = ctx.webhook_settings.allow_private
    return 200, await ctx.call(endpoints.update, _store(ctx), request.tenant, endpoint_id, body, allow), {}


async def delete_endpoint(ctx: Context, request: Request, endpoint_id: str) -> Answer:
    await ctx.call(endpoints.delete, _store(ctx), request.tenant, endpoint_id)
    return 200, {"deleted": endpoint_id}, {}


async def rotate_secret(ctx: Context, request: Request, endpoint_id: str) -> Answer:
    return 200, await ctx.call(endpoints.rotate_secret, _store(ctx), request.tenant, endpoint_id), {}


async def endpoint_deliveries(
    ctx: Context, request: Request, endpoint_id: str, status: str | None, limit: int, after: str | None
) -> Answer:
    page = await ctx.call(deliveries.of_endpoint, _store(ctx), request.tenant, endpoint_id, status, limit, after)
    return 200, page, {}


async def replay_endpoint(ctx: Context, request: Request, endpoint_id: str, body: ReplayBody) -> Answer:
    now = datetime.now(UTC)
    done = await ctx.call(deliveries.replay_endpoint, _store(ctx), request.tenant, endpoint_id, body.since, now)
    _wake(ctx)
    return 200, done, {}


async def list_events(ctx: Context, request: Request, type: str | None, limit: int, after: str | None) -> Answer:
    return 200, await ctx.call(deliveries.events, _store(ctx), request.tenant, type, limit, after), {}


async def get_event(ctx: Context, request: Request, event_id: str) -> Answer:
    return 200, await ctx.call(deliveries.get_event, _store(ctx), request.tenant, event_id), {}


async def event_deliveries(ctx: Context, request: Request, event_id: str) -> Answer:
    return 200, await ctx.call(deliveries.of_event, _store(ctx), request.tenant, event_id), {}


async def replay_event(ctx: Context, request: Request, event_id: str, body: EventReplayBody) -> Answer:
    done = await ctx.call(deliveries.replay_event, _store(ctx), request.tenant, event_id, body.endpoint)
    _wake(ctx)
    return 200, done, {}


ENDPOINT_ID = PathParam("endpoint_id", "we_0123456789abcdef01234567", "The endpoint's id")
EVENT_ID = PathParam("event_id", "evt_000000000001_acme", "The event's id (`webhook-id` of its deliveries)")
PAGE = (Param("limit", LIMIT, "Page size, 1-1000 (100)"), Param("after", TEXT, "The `next` of the previous page"))

ROUTES = [
    Route(
        "POST",
        "/v1/webhook-endpoints",
        "admin",
        create_endpoint,
        "Register a webhook endpoint; the answer holds its signing secret, shown this once",
        status=201,
        returns=CreatedEndpoint,
        body=Body(EndpointBody),
        description="The URL must be https and resolve to public addresses only (400 `insecure_webhook_url`, "
        "`private_webhook_url`, `unresolvable_webhook_url`, `invalid_webhook_url`) unless the server allows "
        "private targets. Deliveries follow Standard Webhooks: `webhook-id`, `webhook-timestamp`, "
        "`webhook-signature`.",
    ),
    Route(
        "GET",
        "/v1/webhook-endpoints",
        "read",
        list_endpoints,
        "List the webhook endpoints (never their secrets)",
        returns=list[EndpointView],
    ),
    Route(
        "GET",
        "/v1/webhook-endpoints/{endpoint_id}",
        "read",
        get_endpoint,
        "Get a webhook endpoint",
        returns=EndpointView,
        path_params=(ENDPOINT_ID,),
    ),
    Route(
        "POST",
        "/v1/webhook-endpoints/{endpoint_id}",
        "admin",
        update_endpoint,
        "Change a webhook endpoint: URL, event types, description, enabled (enabling ends `failing`)",
        returns=EndpointView,
        body=Body(EndpointUpdate),
        path_params=(ENDPOINT_ID,),
    ),
    Route(
        "DELETE",
        "/v1/webhook-endpoints/{endpoint_id}",
        "admin",
        delete_endpoint,
        "Delete a webhook endpoint (its pending deliveries fail)",
        returns=Deleted,
        path_params=(ENDPOINT_ID,),
    ),
    Route(
        "POST",
        "/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
        "admin",
        rotate_secret,
        "A new signing secret, shown once; the previous one keeps signing beside it for 24 hours",
        returns=RotatedSecret,
        path_params=(ENDPOINT_ID,),
        errors=(413, 415),
    ),
    Route(
        "GET",
        "/v1/webhook-endpoints/{endpoint_id}/deliveries",
        "read",
        endpoint_deliveries,
        "The endpoint's delivery log, newest event first (pages: `limit`, then `after`=`next`)",
        returns=DeliveryPage,
        path_params=(ENDPOINT_ID,),
        params=(Param("status", enum("pending", "delivered", "failed"), "Only deliveries in this state"), *PAGE),
    ),
    Route(
        "POST",
        "/v1/webhook-endpoints/{endpoint_id}/replay",
        "admin",
        replay_endpoint,
        "Send the endpoint's failed deliveries of events emitted since a time again",
        returns=Replayed,
        body=Body(ReplayBody),
        path_params=(ENDPOINT_ID,),
    ),
    Route(
        "GET",
        "/v1/webhook-events",
        "read",
        list_events,
        "The events sent to webhook endpoints (the outbox), newest first (pages: `limit`, then `after`=`next`)",
        returns=EventPage,
        params=(Param("type", enum(*EVENT_TYPES), "Only events of this type"), *PAGE),
    ),
    Route(
        "GET",
        "/v1/webhook-events/{event_id}",
        "read",
        get_event,
        "Get an event as its deliveries send it",
        returns=Event,
        path_params=(EVENT_ID,),
    ),
    Route(
        "GET",
        "/v1/webhook-events/{event_id}/deliveries",
        "read",
        event_deliveries,
        "The event's deliveries, one per endpoint",
        returns=list[Delivery],
        path_params=(EVENT_ID,),
    ),
    Route(
        "POST",
        "/v1/webhook-events/{event_id}/replay",
        "admin",
        replay_event,
        "Send an event again, to every enabled endpoint it went to, or to the one named",
        returns=Replayed,
        body=Body(EventReplayBody),
        path_params=(EVENT_ID,),
    ),
]
