"""Reservations (:mod:`meter.live.reservations`): hold an estimate before long-running work, settle or release it.

Invariants: the tenant is the key's (another tenant's reservation is a 404); making, settling and releasing need
``ingest`` (the scope of what reports usage: a gateway or a job runner holds it), reading ``read``; every call runs
on the thread pool (a reservation waits for the customer's lock and a synced write).
"""

from __future__ import annotations

from meter.live.reservations import Reservation, ReservationBody, Reservations, SettleBody
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.http import Answer, Request
from meter.server.table import Body, PathParam, Route

__all__ = ["ROUTES"]


def _reservations(ctx: Context) -> Reservations:
    if ctx.reservations is None:
        message = "reservations are not available: the server is starting or read-only"
        raise ApiError(503, "store_unavailable", message, {"retry-after": "5"})
    return ctx.reservations


async def _known(ctx: Context, request: Request, customer: str) -> None:
    """A 404 for a customer the tenant's catalog does not have (another tenant's included)."""
    await ctx.call(opened(ctx.billing).get_customer, request.tenant, customer)


async def reserve(ctx: Context, request: Request, customer: str, body: ReservationBody) -> Answer:
    reservations = _reservations(ctx)
    await _known(ctx, request, customer)
    return 201, await ctx.call(reservations.reserve, request.tenant, customer, body), {}


async def customer_reservations(ctx: Context, request: Request, customer: str) -> Answer:
    reservations = _reservations(ctx)
    await _known(ctx, request, customer)
    return 200, await ctx.call(reservations.of_customer, request.tenant, customer), {}


async def get_reservation(ctx: Context, request: Request, reservation_id: str) -> Answer:
    return 200, await ctx.call(_reservations(ctx).get, request.tenant, reservation_id), {}


async def settle(ctx: Context, request: Request, reservation_id: str, body: SettleBody) -> Answer:
    return 200, await ctx.call(_reservations(ctx).settle, request.tenant, reservation_id, body.actual), {}


async def release(ctx: Context, request: Request, reservation_id: str) -> Answer:
    return 200, await ctx.call(_reservations(ctx).release, request.tenant, reservation_id), {}


CUSTOMER = PathParam("customer", "cust-1", "The customer's id")
RESERVATION_ID = PathParam("reservation_id", "job-42", "The reservation's id (the tenant's idempotency key)")

ROUTES = [
    Route(
        "POST",
        "/v1/customers/{customer}/reservations",
        "ingest",
        reserve,
        "Reserve an amount of a metered feature or of the credit balance before long-running work",
        status=201,
        returns=Reservation,
        body=Body(ReservationBody, "invalid_reservation"),
        path_params=(CUSTOMER,),
        errors=(404, 409),
        description="`target` is a metered feature's id (`amount` in its meter's units) or `balance` (`amount` in "
        "the customer's currency). Held amounts count against the feature's `remaining` and the balance until the "
        "reservation is settled, released or expires (`expires_in_seconds`, 1 s to 30 days, 3600 by default). 409 "
        "`insufficient` when it does not fit what is left. The id makes it exactly once: a retry with the same body "
        "answers the same reservation, another body under the same id is 409 `conflict`.",
    ),
    Route(
        "GET",
        "/v1/customers/{customer}/reservations",
        "read",
        customer_reservations,
        "The customer's held reservations, oldest first",
        returns=list[Reservation],
        path_params=(CUSTOMER,),
    ),
    Route(
        "GET",
        "/v1/reservations/{reservation_id}",
        "read",
        get_reservation,
        "Get a reservation, held or ended",
        returns=Reservation,
        path_params=(RESERVATION_ID,),
    ),
    Route(
        "POST",
        "/v1/reservations/{reservation_id}/settle",
        "ingest",
        settle,
        "Settle a reservation with what the work used: the hold ends (the usage itself is what the events report)",
        returns=Reservation,
        body=Body(SettleBody, "invalid_reservation"),
        path_params=(RESERVATION_ID,),
        errors=(409,),
        description="Settling again with the same `actual` answers the settled reservation; a reservation released, "
        "expired, or settled with another amount is 409 `invalid_state`.",
    ),
    Route(
        "DELETE",
        "/v1/reservations/{reservation_id}",
        "ingest",
        release,
        "Release a reservation: the hold ends with nothing used (releasing again, or after expiry, answers it)",
        returns=Reservation,
        path_params=(RESERVATION_ID,),
        errors=(409,),
    ),
]
