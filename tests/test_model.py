"""Model-based test: every query checked against a plain-Python reference model.

Random batches, retries, conflicts, invalid events, new meters and restarts; the model is exact (Decimals) and the
first write wins.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from meter import Engine

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=3)
NINE_PLACES = Decimal("0.000000001")

# Every meter the machine may create; each reads fields that every valid event of its type carries.
METERS: dict[str, dict[str, Any]] = {
    "tokens": {
        "event_type": "llm",
        "aggregation": "sum",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
    },
    "calls": {"event_type": "llm", "aggregation": "count", "group_by": {"model": "$.model", "region": "$.meta.region"}},
    "peak": {"event_type": "llm", "aggregation": "max", "value_property": "$.tokens"},
    "floor": {"event_type": "llm", "aggregation": "min", "value_property": "$.tokens"},
    "last": {"event_type": "llm", "aggregation": "latest", "value_property": "$.tokens"},
    "users": {"event_type": "api", "aggregation": "unique_count", "value_property": "$.user"},
    "latency": {"event_type": "api", "aggregation": "avg", "value_property": "$.ms", "group_by": {"route": "$.route"}},
    "eu-calls": {
        "event_type": "api",
        "aggregation": "count",
        "filters": [{"property": "$.route", "op": "eq", "value": "/eu"}],
    },
}


@dataclass(frozen=True)
class Ev:
    source: str
    id: str
    type: str
    subject: str
    minute: int
    data: tuple[tuple[str, Any], ...]

    def wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for k, v in self.data:
            if k == "region":
                data["meta"] = {"region": v}
            else:
                data[k] = v
        t = (T0 + timedelta(minutes=self.minute)).isoformat().replace("+00:00", "Z")
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": t,
            "data": data,
        }

    def get(self, key: str) -> Any:
        return dict(self.data).get(key)


decimals = st.decimals(
    min_value=Decimal("-1000"), max_value=Decimal("100000"), places=3, allow_nan=False, allow_infinity=False
)
wire_number = st.one_of(st.integers(-1000, 100000), decimals.map(str))


def llm_data() -> st.SearchStrategy[tuple[tuple[str, Any], ...]]:
    return st.tuples(
        st.tuples(st.just("tokens"), wire_number),
        st.tuples(st.just("model"), st.sampled_from(["gpt", "claude", "llama"])),
        st.tuples(st.just("region"), st.sampled_from(["eu", "us"])),
    )


def api_data() -> st.SearchStrategy[tuple[tuple[str, Any], ...]]:
    return st.tuples(
        st.tuples(st.just("user"), st.sampled_from(["u1", "u2", "u3", "u4"])),
        st.tuples(st.just("ms"), wire_number),
        st.tuples(st.just("route"), st.sampled_from(["/eu", "/us"])),
    )


@st.composite
def new_event(draw: st.DrawFn) -> Ev:
    kind = draw(st.sampled_from(["llm", "api"]))
    return Ev(
        source=draw(st.sampled_from(["gw-1", "gw-2"])),
        id=draw(st.uuids()).hex[:12],
        type=kind,
        subject=draw(st.sampled_from(["c1", "c2", "c3"])),
        minute=draw(st.integers(0, 179)),
        data=draw(llm_data() if kind == "llm" else api_data()),
    )


def as_decimal(v: Any) -> Decimal:
    return Decimal(str(v))


def reference_value(aggregation: str, evs: list[Ev], prop: str) -> Decimal:
    """The model's value of one group: ``aggregation`` of the events' ``prop``, events in the order accepted."""
    values = [as_decimal(e.get(prop)) for e in evs] if aggregation not in ("count", "unique_count") else []
    aggregate: dict[str, Callable[[], Decimal]] = {
        "sum": lambda: sum(values, Decimal(0)),
        "count": lambda: Decimal(len(evs)),
        "max": lambda: max(values),
        "min": lambda: min(values),
        # Latest event time wins; among equal times, the one accepted last.
        "latest": lambda: as_decimal(max(enumerate(evs), key=lambda p: (p[1].minute, p[0]))[1].get(prop)),
        "unique_count": lambda: Decimal(len({e.get(prop) for e in evs})),
        "avg": lambda: (sum(values, Decimal(0)) / len(values)).quantize(NINE_PLACES, rounding=ROUND_HALF_EVEN),
    }
    return aggregate[aggregation]()


class MeteringMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="meter-model-"))
        self.engine = Engine(self.dir / "db")
        self.accepted: dict[tuple[str, str], Ev] = {}  # first write wins
        self.order: list[Ev] = []  # acceptance order, for `latest`
        self.meters: set[str] = set()

    def teardown(self) -> None:
        self.engine.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize(slug=st.sampled_from(sorted(METERS)))
    def first_meter(self, slug: str) -> None:
        self.create_meter(slug)

    @rule(slug=st.sampled_from(sorted(METERS)))
    def create_meter(self, slug: str) -> None:
        if slug in self.meters:
            return
        created = self.engine.create_meter("t", {"slug": slug, **METERS[slug]})
        assert created.backfill.events + created.backfill.filtered == sum(
            1 for e in self.accepted.values() if e.type == METERS[slug]["event_type"]
        )
        self.meters.add(slug)

    @rule(
        fresh=st.lists(new_event(), max_size=12),
        retries=st.integers(0, 4),
        conflicts=st.integers(0, 2),
        invalid=st.integers(0, 2),
        seed=st.randoms(use_true_random=False),
    )
    def ingest(self, fresh: list[Ev], retries: int, conflicts: int, invalid: int, seed: Any) -> None:
        old = list(self.accepted.values())
        batch: list[Ev | dict[str, Any]] = list(fresh)
        batch += [seed.choice(old) for _ in range(min(retries, len(old)))]
        for _ in range(min(conflicts, len(old))):
            victim = seed.choice(old)
            batch.append(
                Ev(victim.source, victim.id, victim.type, victim.subject, (victim.minute + 1) % 180, victim.data)
            )
        batch += [{"specversion": "1.0", "id": f"bad{i}", "type": "llm"} for i in range(invalid)]
        seed.shuffle(batch)
        if not batch:
            return

        expect_accepted, expect_duplicates, expect_issues = 0, 0, []
        for index, e in enumerate(batch):
            if isinstance(e, dict):
                expect_issues.append((index, "missing_field"))
            elif (e.source, e.id) not in self.accepted:
                self.accepted[(e.source, e.id)] = e
                self.order.append(e)
                expect_accepted += 1
            elif self.accepted[(e.source, e.id)] == e:
                expect_duplicates += 1
            else:
                expect_issues.append((index, "conflict"))

        payload = json.dumps([e if isinstance(e, dict) else e.wire() for e in batch]).encode()
        result = self.engine.ingest("t", payload, now=NOW)
        assert (result.accepted, result.duplicates) == (expect_accepted, expect_duplicates)
        assert [(i.index, i.code) for i in result.issues] == expect_issues

    @rule()
    def restart(self) -> None:
        self.engine.close()
        self.engine = Engine(self.dir / "db")

    @rule()
    def resend_everything(self) -> None:
        """Re-sending all history is a no-op."""
        if not self.order:
            return
        payload = json.dumps([e.wire() for e in self.order]).encode()
        result = self.engine.ingest("t", payload, now=NOW)
        assert (result.accepted, result.duplicates, result.issues) == (0, len(self.order), [])

    @precondition(lambda self: bool(self.meters))
    @invariant()
    def usage_matches_the_model(self) -> None:
        for slug in sorted(self.meters):
            spec = METERS[slug]
            dims = sorted(spec.get("group_by", {}))
            rows = self.engine.usage(
                "t", slug, start=T0, end=T0 + timedelta(hours=3), window_size="hour", group_by=["subject", *dims]
            ).rows()
            got = {(r["window_start"], r["subject"], *(r[d] for d in dims)): (r["value"], r["events"]) for r in rows}
            assert got == self.expected(slug, dims), slug

    def expected(self, slug: str, dims: list[str]) -> dict[tuple[Any, ...], tuple[Decimal, int]]:
        spec = METERS[slug]
        groups: dict[tuple[Any, ...], list[Ev]] = defaultdict(list)
        for e in self.order:
            if e.type != spec["event_type"]:
                continue
            if any(e.get(f["property"][2:]) != f["value"] for f in spec.get("filters", [])):
                continue
            hour = (T0 + timedelta(minutes=e.minute)).replace(minute=0)
            groups[(hour, e.subject, *(e.get(d) for d in dims))].append(e)
        out = {}
        prop = spec.get("value_property", "$.")[2:]
        for key, evs in groups.items():
            out[key] = (reference_value(spec["aggregation"], evs, prop), len(evs))
        return out


MeteringMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestMetering = MeteringMachine.TestCase
