"""The route table: every route of the API, by resource, in the order the router tries them.

`ROUTES` is the one list the router (`router.py`) and the OpenAPI document (`openapi.py`) are both made from; a
route module declares its routes beside its handlers (`Route` in `table.py`). `BENCH_ROUTES` are served only with
METER_BENCH_ENDPOINTS=1 and never documented.

Invariant: no two routes share a method and a path; a literal path (`/v1/invoices/run`) comes before a template it
also fits (`/v1/invoices/{invoice_id}`) would, should they ever share a method (`tests/test_openapi.py` checks).
"""

from __future__ import annotations

from meter.server.routes import (
    admin,
    alerts,
    backfills,
    catalog,
    dropin,
    events,
    health,
    invoices,
    keys,
    ledger,
    live,
    meters,
    payments,
    reservations,
    revenue,
    tax,
    top_ups,
    webhooks,
)
from meter.server.table import Route

__all__ = ["BENCH_ROUTES", "ROUTES"]

ROUTES: list[Route] = [
    *health.ROUTES,
    *events.ROUTES,
    *backfills.ROUTES,
    *meters.ROUTES,
    *admin.ROUTES,
    *keys.ROUTES,
    *catalog.ROUTES,
    *tax.ROUTES,
    *invoices.ROUTES,
    *top_ups.ROUTES,
    *payments.ROUTES,
    *webhooks.ROUTES,
    *ledger.ROUTES,
    *revenue.ROUTES,
    *live.ROUTES,
    *alerts.ROUTES,
    *reservations.ROUTES,
    *dropin.ROUTES,
]

BENCH_ROUTES: list[Route] = events.BENCH_ROUTES
