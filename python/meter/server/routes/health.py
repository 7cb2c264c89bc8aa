"""Probes and self-description: `/healthz`, `/readyz`, `/openapi.json` (public) and `/metrics` (operator).

Invariants: `/healthz` answers whenever the process can run a coroutine (it touches no store, so it answers while
the pool is busy); `/readyz` is 503 with the reason while the server starts, runs degraded or after the engine
failed (fail-stop), so that a load balancer and the image's HEALTHCHECK take it out of service.
"""

from __future__ import annotations

from typing import Any

from meter.server.context import Context
from meter.server.http import Answer, Request
from meter.server.models import Health
from meter.server.table import Route

__all__ = ["ROUTES"]


async def healthz(ctx: Context, request: Request) -> Answer:
    return 200, {"status": "ok"}, {}


async def readyz(ctx: Context, request: Request) -> Answer:
    failure = ctx.degraded or (ctx.engine.failure() if ctx.engine else "starting")
    if failure:
        return 503, {"status": "unavailable", "reason": failure}, {"retry-after": "5"}
    return 200, {"status": "ready"}, {}


async def openapi_document(ctx: Context, request: Request) -> Answer:
    return 200, ctx.openapi_json(), {}


async def metrics(ctx: Context, request: Request) -> Answer:
    return 200, ctx.metrics().encode(), {"content-type": "text/plain; version=0.0.4"}


ROUTES = [
    Route("GET", "/healthz", "public", healthz, "Alive", returns=Health),
    Route("GET", "/readyz", "public", readyz, "Ready: the store is healthy", returns=Health, errors=(503,)),
    Route("GET", "/openapi.json", "public", openapi_document, "This document", returns=dict[str, Any]),
    Route(
        "GET",
        "/metrics",
        "operator",
        metrics,
        "Prometheus metrics, across tenants",
        media={"text/plain": {"type": "string"}},
    ),
]
