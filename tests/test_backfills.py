"""Backfills: a customer's usage over a range replaced whole by one close, and put back by a revert.

Staged events count nowhere until the close; the close cancels the range's events the backfill does not carry, amends
those it carries again and adds the new ones, restating every aggregate; a revert restores exactly what was there.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import body
from meter import Engine
from meter.backfills import BackfillBody, Backfills
from meter.billing.store import InvoiceStore
from meter.exceptions import BatchRejected, Conflict

OCT1 = datetime(2026, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 10, 20, tzinfo=UTC)


def sent(id: str, subject: str, at: datetime, tokens: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": id, "source": "gw", "type": "llm", "subject": subject} | {
        "time": at.isoformat().replace("+00:00", "Z"),
        "data": {"tokens": tokens},
    }


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[Engine, Backfills]]:
    with Engine(tmp_path / "usage", maintenance_interval=None) as engine:
        store = InvoiceStore(tmp_path / "store")
        for slug, aggregation in (("tokens", "sum"), ("peak", "max")):
            engine.create_meter(
                "acme", {"slug": slug, "event_type": "llm", "aggregation": aggregation, "value_property": "$.tokens"}
            )
        events = [
            sent("e1", "ada", OCT1 + timedelta(hours=1), 10),
            sent("e2", "ada", OCT1 + timedelta(hours=2), 20),
            sent("e3", "ada", OCT1 + timedelta(hours=3), 30),
            sent("e4", "ada", OCT1 + timedelta(days=1, hours=1), 40),
            sent("e5", "bob", OCT1 + timedelta(hours=1), 50),
        ]
        assert engine.ingest("acme", body(*events), now=NOW).accepted == 5
        yield engine, Backfills(engine, store)
        store.close()


def usage(engine: Engine, meter: str = "tokens") -> dict[str, str]:
    rows = engine.usage("acme", meter, start=OCT1, end=OCT1 + timedelta(days=2), group_by=["subject"]).rows()
    return {r["subject"]: f"{r['value'].normalize():f}" for r in rows if r["value"]}


def test_a_close_replaces_the_range_and_a_revert_puts_it_back(desk: tuple[Engine, Backfills]) -> None:
    engine, backfills = desk
    before = (usage(engine), usage(engine, "peak"))
    assert before == ({"ada": "100", "bob": "50"}, {"ada": "40", "bob": "50"})
    opened = BackfillBody(start=OCT1, end=OCT1 + timedelta(days=1), reason="re-sent from the warehouse", id="bf-1")
    backfill = backfills.open("acme", msgspec.structs.replace(opened, customer="ada"))
    assert backfill.status == "pending" and backfills.open("acme", backfill_body(backfill)) == backfill
    staged = [sent("e2", "ada", OCT1 + timedelta(hours=2), 25), sent("n1", "ada", OCT1 + timedelta(hours=5), 7)]
    assert backfills.stage("acme", "bf-1", body(*staged)).events == 2
    assert backfills.stage("acme", "bf-1", body(staged[1])).events == 2, "an event staged again replaces itself"
    assert usage(engine) == before[0], "staged events count nowhere yet"

    closed = backfills.close("acme", "bf-1", actor="key:test", now=NOW)
    assert (closed.status, closed.cancelled, closed.amended, closed.added) == ("closed", 2, 1, 1)
    # ada's day: e1 and e3 cancelled, e2 now 25, n1 added; her next day (e4) and bob untouched.
    assert usage(engine) == {"ada": "72", "bob": "50"}
    assert usage(engine, "peak") == {"ada": "40", "bob": "50"}
    assert backfills.close("acme", "bf-1", actor="key:test", now=NOW) == closed, "closing twice changes nothing"
    retry = engine.ingest("acme", msgspec.json.encode([staged[1]]), now=NOW)
    assert (retry.accepted, retry.duplicates) == (0, 1), "an added event's id is taken"
    assert [h.action for h in engine.event_history("acme", "gw", "n1")] == ["add"]

    reverted = backfills.revert("acme", "bf-1", actor="key:test", now=NOW)
    assert reverted.status == "reverted"
    assert (usage(engine), usage(engine, "peak")) == before
    assert [h.action for h in engine.event_history("acme", "gw", "e1")] == ["cancel", "restore"]
    assert [h.action for h in engine.event_history("acme", "gw", "n1")] == ["add", "cancel"]
    found, _ = engine.find_event("acme", "gw", "e2")
    assert msgspec.json.decode(found.column("data")[0].as_py()) == {"tokens": 20}, "the original version again"
    assert backfills.revert("acme", "bf-1", actor="key:test", now=NOW) == reverted
    with pytest.raises(Conflict, match="reverted"):
        backfills.close("acme", "bf-1", actor="key:test")


def test_staging_is_all_or_nothing_and_checks_the_range(desk: tuple[Engine, Backfills]) -> None:
    engine, backfills = desk
    opened = BackfillBody(start=OCT1, end=OCT1 + timedelta(days=1), reason="fix", customer="ada", event_type="llm")
    backfill = backfills.open("acme", opened)
    assert backfill.id.startswith("bf_")
    bad = [
        sent("ok", "ada", OCT1 + timedelta(hours=1), 1),
        sent("late", "ada", OCT1 + timedelta(days=1), 1),
        sent("bob", "bob", OCT1 + timedelta(hours=1), 1),
        {"specversion": "1.0", "id": "x", "source": "gw", "type": "llm", "subject": "ada"},
    ]
    with pytest.raises(BatchRejected) as refused:
        backfills.stage("acme", backfill.id, body(*bad))
    assert [(i["index"], i["code"]) for i in refused.value.issues] == [
        (1, "out_of_range"),
        (2, "invalid_field"),
        (3, "missing_field"),
    ]
    assert backfills.get("acme", backfill.id).events == 0
    with pytest.raises(Conflict, match="another range"):
        backfills.open("acme", msgspec.structs.replace(opened, id=backfill.id, customer="bob"))

    # Without replace, a close only amends and adds: the range's other events stay.
    keep = backfills.open("acme", msgspec.structs.replace(opened, id="bf-keep", replace=False))
    backfills.stage("acme", keep.id, body(sent("n2", "ada", OCT1 + timedelta(hours=9), 5)))
    closed = backfills.close("acme", keep.id, actor="key:test", now=NOW)
    assert (closed.cancelled, closed.added) == (0, 1) and usage(engine) == {"ada": "105", "bob": "50"}
    # A pending backfill reverted drops its staged events.
    pending = backfills.open("acme", msgspec.structs.replace(opened, id="bf-drop"))
    backfills.stage("acme", pending.id, body(sent("n3", "ada", OCT1 + timedelta(hours=9), 5)))
    assert backfills.revert("acme", pending.id, actor="key:test").status == "reverted"
    assert usage(engine) == {"ada": "105", "bob": "50"}
    assert {b.id for b in backfills.list("acme")} == {backfill.id, "bf-keep", "bf-drop"}


def backfill_body(b: Any) -> BackfillBody:
    return BackfillBody(
        start=b.start, end=b.end, reason=b.reason, id=b.id, customer=b.customer, event_type=b.event_type
    )
