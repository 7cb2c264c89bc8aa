"""Live balances and entitlement checks: answered from the live state in memory (:mod:`meter.live.tracker`).

A check is what a gateway asks on every request, so these handlers run on the event loop without a thread hop or a
disk read: a dictionary lookup and an encoding. Only a customer the live state does not know (no subscription, or
unknown) costs a catalog read on the pool, to tell "not entitled" from 404.

Invariants: every answer carries ``as_of`` (every event acknowledged before it is reflected); a customer of another
tenant is unknown here (404), as everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, cast

import msgspec

from meter.catalog.billing import BillingCatalog
from meter.exceptions import NotFound
from meter.live.answers import Access, Balance
from meter.live.tracker import Tracker
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.http import Answer, Request
from meter.server.table import Body, PathParam, Route

__all__ = ["ROUTES"]

#: Checks per batch request: a gateway's whole fleet of customers in a few calls, never one unbounded answer.
MAX_CHECKS = 1000


class Check(msgspec.Struct, forbid_unknown_fields=True):
    customer: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    feature: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class Checks(msgspec.Struct, forbid_unknown_fields=True):
    checks: Annotated[list[Check], msgspec.Meta(min_length=1, max_length=MAX_CHECKS)]


class CheckResults(msgspec.Struct):
    results: list[Access]


def _tracker(ctx: Context) -> Tracker:
    if ctx.live is None:
        raise ApiError(
            503,
            "live_state_unavailable",
            "the live state is not running (the server started read-only or is starting): retry shortly",
            {"retry-after": "5"},
        )
    return ctx.live


async def _known(ctx: Context, tenant: str, customer: str) -> None:
    """404 unless the customer exists (it then has no subscription in force: nothing is live for it)."""
    catalog = cast("BillingCatalog", opened(ctx.billing))
    await ctx.call(catalog.get_customer, tenant, customer)


async def _access(ctx: Context, tracker: Tracker, tenant: str, customer: str, feature: str) -> Access:
    found = tracker.check(tenant, customer, feature)
    if found is not None:
        return found
    await _known(ctx, tenant, customer)
    return Access.not_entitled(customer, feature, datetime.now(UTC))


async def get_balance(ctx: Context, request: Request, customer: str) -> Answer:
    tracker = _tracker(ctx)
    found = tracker.balance(request.tenant, customer)
    if found is None:
        await _known(ctx, request.tenant, customer)
        found = Balance.none(customer, datetime.now(UTC))
    if (request.tenant, customer) in tracker.errors:
        raise ApiError(
            409,
            "balance_unavailable",
            f"customer {customer!r}'s usage cannot be rated now: {tracker.errors[(request.tenant, customer)]}",
        )
    return 200, found, {}


async def list_entitlements(ctx: Context, request: Request, customer: str) -> Answer:
    tracker = _tracker(ctx)
    standing = tracker.standing(request.tenant, customer)
    if standing is None:
        await _known(ctx, request.tenant, customer)
        return 200, [], {}
    return 200, sorted(standing.entitlements.values(), key=lambda a: a.feature), {}


async def get_entitlement(ctx: Context, request: Request, customer: str, feature: str) -> Answer:
    return 200, await _access(ctx, _tracker(ctx), request.tenant, customer, feature), {}


async def check_many(ctx: Context, request: Request, body: Checks) -> Answer:
    tracker = _tracker(ctx)
    results = []
    for check in body.checks:
        try:
            results.append(await _access(ctx, tracker, request.tenant, check.customer, check.feature))
        except NotFound:  # an unknown customer is entitled to nothing; a batch answers for every check
            results.append(Access.not_entitled(check.customer, check.feature, datetime.now(UTC)))
    return 200, CheckResults(results), {}


CUSTOMER = PathParam("customer", "acme", "The customer's id")
FEATURE = PathParam("feature", "tokens", "The feature's id, as the plan's entitlements name it")

ROUTES = [
    Route(
        "GET",
        "/v1/customers/{customer}/balance",
        "read",
        get_balance,
        "The customer's live credit balance: each grant, what the current cycle's usage drew from it, and freshness",
        returns=Balance,
        path_params=(CUSTOMER,),
        errors=(404, 409),
    ),
    Route(
        "GET",
        "/v1/customers/{customer}/entitlements",
        "read",
        list_entitlements,
        "The customer's entitlements now: access, usage, limit, remaining and reset of each feature",
        returns=list[Access],
        path_params=(CUSTOMER,),
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/customers/{customer}/entitlements/{feature}",
        "read",
        get_entitlement,
        "Check one feature: may the customer use it now? (`has_access`, and why not in `reason`)",
        returns=Access,
        path_params=(CUSTOMER, FEATURE),
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/entitlements/check",
        "read",
        check_many,
        f"Check many customers' features at once (at most {MAX_CHECKS}); an unknown customer is not entitled",
        returns=CheckResults,
        body=Body(Checks, "invalid_check"),
    ),
]
