"""Top-ups: prepaid credit a customer buys at once (:mod:`meter.billing.top_ups`).

`POST /v1/customers/{customer}/top-ups` adds the grant to the customer's subscription and answers it with its
invoice, issued and finalized at once (201). Invariant: exactly once by the top-up's id: a retry with the same body
answers the same top-up and invoice (200), another body under the same id is a 409 `conflict`. `GET` lists the
customer's top-ups.
"""

from __future__ import annotations

from typing import cast

from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.billing.top_ups import Sources, TopUp, TopUpBody, TopUpResult, top_up, top_ups
from meter.catalog.billing import BillingCatalog
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.table import Body, PathParam, Route

__all__ = ["ROUTES"]


def _sources(ctx: Context) -> Sources:
    """The stores a top-up uses; one a degraded start could not open answers 503 store_unavailable when used."""
    invoicer = cast(Invoicer, opened(ctx.invoicer))
    return Sources(cast(InvoiceStore, opened(ctx.invoices)), cast(BillingCatalog, opened(ctx.billing)), invoicer.issue)


async def create_top_up(ctx: Context, request: Request, customer: str, body: TopUpBody) -> Answer:
    result, new = await ctx.call(top_up, _sources(ctx), request.tenant, customer, body)
    return (201 if new else 200), result, {}


async def list_top_ups(ctx: Context, request: Request, customer: str) -> Answer:
    # A customer the tenant does not have is a 404, as its other objects are (never an empty list).
    await ctx.call(cast(BillingCatalog, opened(ctx.billing)).get_customer, request.tenant, customer)
    return 200, await ctx.call(top_ups, cast(InvoiceStore, opened(ctx.invoices)), request.tenant, customer), {}


CUSTOMER = PathParam("customer", "cust-1", "The customer's id")

ROUTES = [
    Route(
        "POST",
        "/v1/customers/{customer}/top-ups",
        "admin",
        create_top_up,
        "Buy prepaid credit now: a grant on the customer's subscription, invoiced and finalized at once, exactly "
        "once by its id (a retry answers the same invoice)",
        status=201,
        returns=TopUpResult,
        body=Body(TopUpBody, "invalid_top_up"),
        path_params=(CUSTOMER,),
        errors=(404, 409),
    ),
    Route(
        "GET",
        "/v1/customers/{customer}/top-ups",
        "read",
        list_top_ups,
        "List the customer's top-ups",
        returns=list[TopUp],
        path_params=(CUSTOMER,),
    ),
]
