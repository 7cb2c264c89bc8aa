"""Alert definitions (:mod:`meter.live.alerts`): create, list, get, delete; their crossings arrive as webhook events.

Invariants: the tenant is the key's; writes need ``admin``, reads ``read``; a body that does not fit its kind is a
400 ``invalid_catalog`` saying what to fix; every catalog call runs on the thread pool.
"""

from __future__ import annotations

from typing import cast

from meter.catalog.billing import BillingCatalog
from meter.engine import Engine
from meter.live.alerts import Alert, AlertBook
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.models import Deleted
from meter.server.table import Body, PathParam, Route

__all__ = ["ROUTES"]


def _book(ctx: Context) -> AlertBook:
    """The alerts of the catalog; meters are checked against the engine's (the only place they are defined)."""
    return AlertBook(cast(BillingCatalog, opened(ctx.billing)), cast(Engine, opened(ctx.engine)))


async def create_alert(ctx: Context, request: Request, body: Alert) -> Answer:
    return 201, await ctx.call(_book(ctx).create, request.tenant, body), {}


async def list_alerts(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(_book(ctx).list, request.tenant), {}


async def get_alert(ctx: Context, request: Request, alert_id: str) -> Answer:
    return 200, await ctx.call(_book(ctx).get, request.tenant, alert_id), {}


async def delete_alert(ctx: Context, request: Request, alert_id: str) -> Answer:
    await ctx.call(_book(ctx).delete, request.tenant, alert_id)
    return 200, {"deleted": alert_id}, {}


ALERT_ID = PathParam("alert_id", "tokens-80", "The alert's id")

ROUTES = [
    Route(
        "POST",
        "/v1/alerts",
        "admin",
        create_alert,
        "Create an alert: thresholds on a customer's usage, spend or balance, or a usage anomaly",
        status=201,
        returns=Alert,
        body=Body(Alert, "invalid_catalog"),
        errors=(404, 409),
        description="Kinds: `usage` (`meter`, `thresholds` in its units: `usage.threshold_crossed`), `spend` "
        "(`thresholds` in the customer's currency: `spend.threshold_crossed`), `balance` (`balance.low` at or below "
        "each threshold, `balance.depleted` at 0), `anomaly` (`meter`, `factor`, `window_minutes`: `usage.anomaly` "
        "when the window's rate exceeds `factor` times the customer's mean rate of the previous 24 hours). Scope: "
        "`customer`, every customer of `plan`, or (neither) every customer. Each crossing is one webhook event per "
        "threshold and billing cycle; `entitlement.exhausted` needs no alert. 409 `already_exists` for a taken id.",
    ),
    Route("GET", "/v1/alerts", "read", list_alerts, "List the alerts", returns=list[Alert]),
    Route("GET", "/v1/alerts/{alert_id}", "read", get_alert, "Get an alert", returns=Alert, path_params=(ALERT_ID,)),
    Route(
        "DELETE",
        "/v1/alerts/{alert_id}",
        "admin",
        delete_alert,
        "Delete an alert (the crossings it recorded are not emitted again by an alert of the same id)",
        returns=Deleted,
        path_params=(ALERT_ID,),
    ),
]
