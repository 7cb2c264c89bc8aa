"""An edge's view of the cluster: it appends requests to the log and asks partitions' owners; it holds no state.

Ingest: the batch is parsed and validated in Rust as ``meter serve`` does (``split_batch``), split by partition, and
each part appended to the log with the events' indexes in the request. Once every part is stored by a quorum the
batch is durable: the edge then asks each part's owner for the part's outcome, waiting ``outcome_wait`` seconds at
most, and answers with what it learnt (``QueuedIngest``: the events still being applied are ``pending``, and the
batch's id finds their outcome later, ``batch``).

Queries ask the owners of the partitions involved (one for a named customer, all otherwise) for partial answers and
merge them exactly (``finish_usage``). Meters are log entries too, appended to every partition, so that every
partition's engine meets them at the same place among its events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import nats.errors

from meter import _core
from meter.cluster.log import Op, append
from meter.cluster.runner import ClusterUnavailable
from meter.cluster.settings import Cluster, ask_subject
from meter.engine import Usage, WindowSize, finish_usage
from meter.exceptions import AlreadyExists, BatchRejected, InvalidInput, NotFound
from meter.schemas import CreatedMeter, EventIssue, EventWarning, Meter, MeterSpec, QueuedIngest

__all__ = ["ClusterUnavailable", "Edge", "ask"]


class _Outcome(msgspec.Struct):
    tenant: str
    ok: Any = None
    error: dict[str, Any] | None = None


class _Part(msgspec.Struct, frozen=True):
    """A part of a batch: where it is in the log, and how many events it holds."""

    partition: int
    seq: int
    events: int = 0


class Edge:
    def __init__(self, cluster: Cluster, outcome_wait: float = 5.0, ask_timeout: float = 20.0) -> None:
        self.cluster, self.outcome_wait, self.ask_timeout = cluster, outcome_wait, ask_timeout
        self.partitions = cluster.settings.partitions

    # Ingest

    async def ingest(self, tenant: str, body: bytes, *, atomic: bool = False) -> QueuedIngest:
        received_us = time.time_ns() // 1000
        raw_issues, _, parts = await asyncio.to_thread(_core.split_batch, tenant, body, received_us, self.partitions)
        issues = msgspec.json.decode(raw_issues, type=list[EventIssue])
        if atomic and issues:
            raise BatchRejected(
                f"the atomic batch was rejected: {len(issues)} event(s) could not be applied",
                details=msgspec.json.encode(issues).decode(),
            )
        if atomic and len(parts) > 1:
            raise InvalidInput(
                f"an atomic batch must concern customers of one partition; this one spans {len(parts)}: send one "
                "atomic batch per customer, or leave atomic off",
                "atomic_spans_partitions",
            )
        seqs = await asyncio.gather(
            *(
                append(self.cluster.js, p, tenant, "ingest", part, received_us, atomic=atomic, indexes=indexes)
                for p, part, indexes in parts
            )
        )
        stored = [_Part(p, seq, len(indexes)) for (p, _, indexes), seq in zip(parts, seqs, strict=True)]
        return await self._result(tenant, stored, issues, self.outcome_wait)

    async def batch(self, tenant: str, batch: str) -> QueuedIngest:
        """What is known now of a batch an ingest answered (``QueuedIngest.batch``)."""
        return await self._result(tenant, _decode_batch(batch, self.partitions), [], 0.0)

    async def _result(self, tenant: str, stored: list[_Part], issues: list[EventIssue], wait: float) -> QueuedIngest:
        outcomes = await asyncio.gather(*(self._outcome(tenant, part, wait) for part in stored))
        result = QueuedIngest(0, 0, issues, [], batch=_encode_batch(stored))
        for outcome, part in zip(outcomes, stored, strict=True):
            if outcome is None:
                result.pending += part.events
            elif outcome.error is not None:
                # Refused as a whole (an atomic part, or a limit): its issues name its events.
                result.issues += msgspec.convert(outcome.error.get("issues") or [], list[EventIssue])
            else:
                report = outcome.ok
                result.accepted += report["accepted"]
                result.duplicates += report["duplicates"]
                result.issues += msgspec.convert(report["issues"], list[EventIssue])
                result.warnings += msgspec.convert(report["warnings"], list[EventWarning])
        result.issues.sort(key=lambda i: i.index)
        result.warnings.sort(key=lambda w: w.index)
        return result

    async def _outcome(self, tenant: str, part: _Part, wait: float) -> _Outcome | None:
        """The part's outcome, waiting up to ``wait`` seconds for it to be applied; None if it is not by then.

        Asked again, in short waits, until then: the partition may change owners meanwhile (a takeover, a hand-back),
        and a new owner knows nothing of the old one's waiting requests.
        """
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            request = {"op": "outcome", "tenant": tenant, "seq": part.seq, "wait": min(left, 2.0)}
            try:
                msg = await self.cluster.nc.request(
                    ask_subject(part.partition), msgspec.json.encode(request), timeout=min(left, 2.0) + 1.0
                )
                state = (msg.headers or {}).get("Meter-State")
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                state = None  # no owner right now
            if state == "applied":
                return msgspec.json.decode(msg.data, type=_Outcome)
            if state == "forgotten":
                raise NotFound(
                    f"batch part {part.partition}-{part.seq} is unknown to this tenant or older than the outcomes kept",
                    "not_found",
                )
            if time.monotonic() >= deadline:
                return None
            if state is None:
                await asyncio.sleep(0.2)

    # Queries

    async def usage(
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
        subjects = list(subjects)
        request = {
            "op": "usage",
            "tenant": tenant,
            "meter": meter,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "window_size": window_size,
            "subjects": subjects,
            "group_by": list(group_by),
            "filters": dict(filters or {}),
            "tz": tz,
        }
        # A named customer lives in one partition: only those partitions are asked.
        asked = sorted({_core.partition_of(tenant, s, self.partitions) for s in subjects}) or range(self.partitions)
        partials = await asyncio.gather(*(self._ask(p, request) for p in asked))
        return await asyncio.to_thread(finish_usage, partials)

    async def list_meters(self, tenant: str) -> list[Meter]:
        # Every partition holds every meter (they are log entries of each): partition 0's owner answers.
        return msgspec.json.decode(await self._ask(0, {"op": "meters", "tenant": tenant}), type=list[Meter])

    async def get_meter(self, tenant: str, slug: str) -> Meter:
        return msgspec.json.decode(await self._ask(0, {"op": "meter", "tenant": tenant, "slug": slug}), type=Meter)

    async def create_meter(self, tenant: str, spec: MeterSpec | Mapping[str, Any]) -> CreatedMeter:
        spec = msgspec.convert(spec, MeterSpec) if not isinstance(spec, MeterSpec) else spec
        outcomes = await self._everywhere(tenant, "create_meter", msgspec.json.encode(spec))
        created = [msgspec.convert(o, CreatedMeter) for o in outcomes]
        first = created[0]
        # The backfill of each partition filled the meter from that partition's events.
        for name in ("events", "filtered", "unreadable"):
            setattr(first.backfill, name, sum(getattr(c.backfill, name) for c in created))
        return first

    async def delete_meter(self, tenant: str, slug: str) -> None:
        await self._everywhere(tenant, "delete_meter", slug.encode())

    async def _everywhere(self, tenant: str, op: Op, body: bytes) -> list[Any]:
        """Appends a meter entry to every partition and waits for every outcome (a refusal is the same everywhere)."""
        received_us = time.time_ns() // 1000
        seqs = await asyncio.gather(
            *(append(self.cluster.js, p, tenant, op, body, received_us) for p in range(self.partitions))
        )
        parts = [_Part(p, seq) for p, seq in enumerate(seqs)]
        outcomes = await asyncio.gather(*(self._outcome(tenant, part, self.ask_timeout) for part in parts))
        if any(o is None for o in outcomes):
            raise ClusterUnavailable(
                "the meter change is stored in the log and every partition will apply it, but not all answered in "
                f"{self.ask_timeout:.0f} s; read the meter again shortly"
            )
        for outcome in outcomes:
            if outcome is not None and outcome.error is not None:
                code, message = outcome.error["code"], outcome.error["message"]
                error = {"already_exists": AlreadyExists, "not_found": NotFound}.get(code, InvalidInput)
                raise error(message, code)
        return [o.ok for o in outcomes if o is not None]

    async def _ask(self, partition: int, request: dict[str, Any]) -> bytes:
        return await ask(self.cluster, partition, request, self.ask_timeout)


async def ask(cluster: Cluster, partition: int, request: dict[str, Any], timeout: float) -> bytes:
    """A request to a partition's owner (``worker.Partition.dispatch``): its answer, or its refusal raised."""
    try:
        msg = await cluster.nc.request(ask_subject(partition), msgspec.json.encode(request), timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        raise ClusterUnavailable(
            f"partition {partition} has no worker answering right now (one is taking it over); retry shortly"
        ) from None
    if (msg.headers or {}).get("Meter-Error"):
        error = msgspec.json.decode(msg.data, type=dict[str, str])
        code = error["code"]
        cls = {"not_found": NotFound, "already_exists": AlreadyExists, ClusterUnavailable.code: ClusterUnavailable}
        raise cls.get(code, InvalidInput)(error["message"], code)
    return msg.data


def _encode_batch(parts: Sequence[_Part]) -> str:
    """A batch's id: its parts, `<partition>-<position>-<events>` joined by dots (what a lookup needs, no more)."""
    return ".".join(f"{p.partition}-{p.seq}-{p.events}" for p in parts)


def _decode_batch(batch: str, partitions: int) -> list[_Part]:
    try:
        parts = [_Part(*map(int, item.split("-", 2))) for item in batch.split(".")]
    except (TypeError, ValueError):
        parts = []
    bad = any(not 0 <= p.partition < partitions or p.seq < 1 or p.events < 0 for p in parts)
    if not parts or len(parts) > partitions or bad:
        raise InvalidInput(f"{batch!r} is not a batch id: use the `batch` an ingest answered", "invalid_batch")
    return parts
