"""``meter serve --cluster``: an edge's HTTP API, the usage routes of ``meter serve`` over the cluster.

The same app (``MeterApp``: requests, keys, errors, compression), with the usage plane's routes only, served by
``ClusterEngine`` (which has the methods of ``meter.Engine`` those routes call, answered by the cluster through
``edge.Edge``) and ``ClusterKeys``. Billing, money and the console read the exported dataset; they run in one
``meter serve`` beside the cluster (README, "Running a cluster").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from meter.cluster.edge import Edge
from meter.cluster.keys import ClusterKeys
from meter.cluster.runner import Runner
from meter.cluster.settings import Cluster, connect
from meter.engine import Engine, Usage, WindowSize
from meter.schemas import CreatedMeter, Meter, MeterSpec, QueuedIngest
from meter.server.app import MAX_BODY, MeterApp
from meter.server.context import Context
from meter.server.http import Answer, Request
from meter.server.router import Router
from meter.server.routes import ROUTES
from meter.server.table import PathParam, Route
from meter.server.warmup import build_decoding_info

__all__ = ["ClusterEngine", "EdgeApp", "create_app"]

#: The routes an edge serves: (method, path) of meter serve's, and the batches route of its own.
SERVED = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/v1/events"),
    ("GET", "/v1/meters"),
    ("POST", "/v1/meters"),
    ("GET", "/v1/meters/{slug}"),
    ("GET", "/v1/meters/{slug}/usage"),
}


class ClusterEngine:
    """What the served routes call of ``meter.Engine``, answered by the cluster."""

    def __init__(self, edge: Edge, run: Runner) -> None:
        self.edge, self.run = edge, run

    def ingest(self, tenant: str, body: bytes, *, atomic: bool = False) -> QueuedIngest:
        return self.run(self.edge.ingest(tenant, body, atomic=atomic))

    def batch(self, tenant: str, batch: str) -> QueuedIngest:
        return self.run(self.edge.batch(tenant, batch))

    def usage(
        self,
        tenant: str,
        meter: str,
        *,
        start: datetime,
        end: datetime,
        window_size: WindowSize | None = None,
        subjects: Iterable[str] = (),
        group_by: Iterable[str] = (),
        filters: Mapping[str, str | Sequence[str]] | None = None,
        tz: str | None = None,
    ) -> Usage:
        return self.run(
            self.edge.usage(
                tenant,
                meter,
                start=start,
                end=end,
                window_size=window_size,
                subjects=subjects,
                group_by=group_by,
                filters=filters,
                tz=tz,
            )
        )

    def create_meter(self, tenant: str, spec: MeterSpec | Mapping[str, Any]) -> CreatedMeter:
        return self.run(self.edge.create_meter(tenant, spec))

    def list_meters(self, tenant: str) -> list[Meter]:
        return self.run(self.edge.list_meters(tenant))

    def get_meter(self, tenant: str, slug: str) -> Meter:
        return self.run(self.edge.get_meter(tenant, slug))

    def failure(self) -> str | None:
        return None if self.edge.cluster.nc.is_connected else "not connected to the NATS cluster"


async def get_batch(ctx: Context, request: Request, batch: str) -> Answer:
    engine = cast(ClusterEngine, ctx.engine)
    result = await ctx.call(engine.batch, request.tenant, batch)
    return (202 if result.pending else 200), result, {}


BATCH_ROUTE = Route(
    "GET",
    "/v1/events/batches/{batch}",
    "ingest",
    get_batch,
    "Cluster mode: what is known of a batch's events (200 once all are applied, 202 while some are pending)",
    returns=QueuedIngest,
    path_params=(PathParam("batch", "3-1041-120.7-1042-80", "The `batch` an ingest answered"),),
)


class EdgeApp(MeterApp):
    """``MeterApp`` on the cluster: no data directory, the usage routes only."""

    def __init__(self, servers: str, max_body: int = MAX_BODY, outcome_wait: float = 5.0) -> None:
        super().__init__(Path("."), max_body=max_body)
        self.servers, self.outcome_wait = servers, outcome_wait
        self.router = Router([r for r in ROUTES if (r.method, r.path) in SERVED] + [BATCH_ROUTE])
        self.runner: Runner | None = None
        self.cluster: Cluster | None = None

    def startup(self) -> None:
        build_decoding_info()
        self.runner = run = Runner()
        self.cluster = cluster = run(connect(self.servers, f"meter-edge-{os.getpid()}"))
        # The routes call it as they call an engine: only the methods ClusterEngine has (SERVED).
        self.engine = cast(Engine, ClusterEngine(Edge(cluster, self.outcome_wait), run))
        self.keys = cast(Any, ClusterKeys(cluster.catalog, run))

    def close_stores(self) -> None:
        self.engine = self.keys = None
        if self.cluster is not None and self.runner is not None:
            self.runner(self.cluster.close())
        if self.runner is not None:
            self.runner.close()
        self.cluster = self.runner = None


def create_app() -> EdgeApp:
    """Factory for granian: `meter serve --cluster` sets METER_CLUSTER."""
    wait = os.environ.get("METER_OUTCOME_WAIT")
    return EdgeApp(os.environ["METER_CLUSTER"], outcome_wait=float(wait) if wait else 5.0)
