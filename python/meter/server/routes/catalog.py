"""The billing catalog, per tenant: customers, products, plans (with their versions) and subscriptions.

Each of the four kinds has the same four routes: POST creates or replaces (a plan: creates, 201; its prices come
with its versions), GET lists or gets one, DELETE deletes what nothing else refers to (409 `in_use`). Plans get new
versions (`POST /v1/plans/{plan_id}/versions`, never edited in place) and their entitlements, whatever the version
(`PUT /v1/plans/{plan_id}/entitlements`, the whole list), and subscriptions move between versions of
their plan (`POST /v1/subscriptions/{sub_id}/migrate`).

Invariants: a body that does not match its type is a 400 `invalid_catalog`; every catalog call runs on the thread
pool (a write takes the catalog's lock, which a meter deletion holds meanwhile).
"""

from __future__ import annotations

from typing import Any

import msgspec

from meter.catalog.billing import (
    Customer,
    MigrationBody,
    Plan,
    PlanBody,
    PlanVersion,
    PlanVersionBody,
    Product,
    Subscription,
)
from meter.catalog.entitlements import Entitlement
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.models import Deleted
from meter.server.table import Body, Handler, PathParam, Route

__all__ = ["ROUTES"]


def _put(singular: str) -> Handler:
    async def put(ctx: Context, request: Request, body: Any) -> Answer:
        billing = opened(ctx.billing)
        if singular == "plan":
            created = await ctx.call(
                billing.create_plan, request.tenant, body.id, body.name, body.versions, body.entitlements
            )
            return 201, created, {}
        return 200, await ctx.call(getattr(billing, f"put_{singular}"), request.tenant, body), {}

    return put


def _list(singular: str) -> Handler:
    async def list_all(ctx: Context, request: Request) -> Answer:
        return 200, await ctx.call(getattr(opened(ctx.billing), f"list_{singular}s"), request.tenant), {}

    return list_all


def _get(singular: str) -> Handler:
    async def get(ctx: Context, request: Request, item_id: str) -> Answer:
        return 200, await ctx.call(getattr(opened(ctx.billing), f"get_{singular}"), request.tenant, item_id), {}

    return get


def _delete(singular: str) -> Handler:
    async def delete(ctx: Context, request: Request, item_id: str) -> Answer:
        await ctx.call(getattr(opened(ctx.billing), f"delete_{singular}"), request.tenant, item_id)
        return 200, {"deleted": item_id}, {}

    return delete


async def add_plan_version(ctx: Context, request: Request, plan_id: str, body: PlanVersionBody) -> Answer:
    billing = opened(ctx.billing)
    return 201, await ctx.call(billing.add_plan_version, request.tenant, plan_id, body.effective_from, body.prices), {}


async def put_plan_entitlements(ctx: Context, request: Request, plan_id: str, body: list[Entitlement]) -> Answer:
    billing = opened(ctx.billing)
    return 200, await ctx.call(billing.put_plan_entitlements, request.tenant, plan_id, body), {}


async def migrate_subscription(ctx: Context, request: Request, sub_id: str, body: MigrationBody) -> Answer:
    billing = opened(ctx.billing)
    return 200, await ctx.call(billing.migrate_subscription, request.tenant, sub_id, body.version, body.at), {}


#: (singular, the stored item, the body a POST takes, the status of a POST, an example id)
KINDS: list[tuple[str, type[msgspec.Struct], type[msgspec.Struct], int, str]] = [
    ("customer", Customer, Customer, 200, "cust-1"),
    ("product", Product, Product, 200, "llm"),
    ("plan", Plan, PlanBody, 201, "pro"),
    ("subscription", Subscription, Subscription, 200, "sub-1"),
]


def _kind_routes(
    singular: str, item: type[msgspec.Struct], body: type[msgspec.Struct], created: int, example: str
) -> list[Route]:
    kind, name = f"{singular}s", item.__name__.lower()
    item_id = PathParam("item_id", example, f"The {name}'s id")
    verb = "Create a plan (its prices come with its versions)" if singular == "plan" else f"Create or replace a {name}"
    return [
        Route(
            "POST",
            f"/v1/{kind}",
            "admin",
            _put(singular),
            verb,
            status=created,
            returns=item,
            body=Body(body, "invalid_catalog"),
            errors=(404, 409),
        ),
        Route("GET", f"/v1/{kind}", "read", _list(singular), f"List {kind}", returns=list[item]),  # type: ignore[valid-type]
        Route(
            "GET",
            f"/v1/{kind}/{{item_id}}",
            "read",
            _get(singular),
            f"Get a {name}",
            returns=item,
            path_params=(item_id,),
        ),
        Route(
            "DELETE",
            f"/v1/{kind}/{{item_id}}",
            "admin",
            _delete(singular),
            f"Delete a {name} nothing refers to (else 409 in_use)",
            returns=Deleted,
            path_params=(item_id,),
            errors=(409,),
        ),
    ]


ROUTES = [
    *(route for kind in KINDS for route in _kind_routes(*kind)),
    Route(
        "POST",
        "/v1/plans/{plan_id}/versions",
        "admin",
        add_plan_version,
        "Add a plan version (editing a plan)",
        status=201,
        returns=PlanVersion,
        body=Body(PlanVersionBody, "invalid_catalog"),
        path_params=(PathParam("plan_id", "pro", "The plan's id"),),
    ),
    Route(
        "PUT",
        "/v1/plans/{plan_id}/entitlements",
        "admin",
        put_plan_entitlements,
        "Replace a plan's entitlements (features, static values, metered allowances); answers the plan",
        returns=Plan,
        body=Body(list[Entitlement], "invalid_catalog"),
        path_params=(PathParam("plan_id", "pro", "The plan's id"),),
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/subscriptions/{sub_id}/migrate",
        "admin",
        migrate_subscription,
        "Move a subscription to another version of its plan from `at`",
        returns=Subscription,
        body=Body(MigrationBody, "invalid_catalog"),
        path_params=(PathParam("sub_id", "sub-1", "The subscription's id"),),
    ),
]
