"""Corrections over HTTP: cancel and amend accepted events, then every answer follows.

Usage queries, one event's status and history, searches (before and after the scheduled export, which writes the
corrections file beside the raw events) and the usage export all show the corrected events and nothing of the old
versions. A correction is all or nothing, and a retry applies once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import meter
import pyarrow.parquet as pq
import pytest
from http_server import RECENT, Server
from meter.client import ServerError
from meter.schemas import AmendEvent, CancelEvent

FROM, TO = (RECENT - timedelta(hours=1)).isoformat(), (RECENT + timedelta(hours=1)).isoformat()


def sent(n: int, subject: str = "ada", tokens: int | None = None) -> dict[str, Any]:
    at = (RECENT + timedelta(seconds=n)).isoformat()
    return {"specversion": "1.0", "id": f"e{n}", "source": "gw", "type": "llm", "subject": subject, "time": at} | {
        "data": {"tokens": n if tokens is None else tokens}
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corrections")


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Server]:
    s = Server(data_dir, args=("--export-every", "0.5"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> Iterator[httpx.Client]:
    with server.client(server.tenant_key("acme", ["ingest", "read", "admin"])) as c:
        for meter in (
            {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"},
            {"slug": "peak", "event_type": "llm", "aggregation": "max", "value_property": "$.tokens"},
        ):
            assert c.post("/v1/meters", json=meter).status_code == 201, meter
        assert (
            c.post("/v1/events", json=[sent(n, "ada" if n % 2 else "bob") for n in range(1, 11)]).json()["accepted"]
            == 10
        )
        yield c


def usage(client: httpx.Client, meter: str) -> dict[str, str]:
    answer = client.get(f"/v1/meters/{meter}/usage", params={"from": FROM, "to": TO, "group_by": "subject"})
    assert answer.status_code == 200, answer.text
    return {row["subject"]: row["value"] for row in answer.json()["data"]}


def search(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    answer = client.get("/v1/events", params={"from": FROM, "to": TO, "limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"])


def wait_for_export(data_dir: Path, seq: int) -> None:
    """Until the scheduled export has written the raw events of commit ``seq``."""
    manifest = data_dir / "export" / "events" / "tenant=acme" / "_exported.json"
    deadline = time.monotonic() + 30
    while not (manifest.exists() and json.loads(manifest.read_text())["after_seq"] >= seq):
        assert time.monotonic() < deadline, "the scheduled export did not run"
        time.sleep(0.2)


def test_cancel_and_amend_restate_usage_history_search_and_export(data_dir: Path, acme: httpx.Client) -> None:
    # ada has 1, 3, 5, 7, 9 (25 tokens, peak 9); bob 2, 4, 6, 8, 10 (30, peak 10).
    assert usage(acme, "tokens") == {"ada": "25", "bob": "30"} and usage(acme, "peak") == {"ada": "9", "bob": "10"}
    wait_for_export(data_dir, 1)  # the old versions are in the export before they are corrected
    body = {
        "reason": "gateway bug sent e9 twice; e10 belongs to ada and was 100 tokens",
        "items": [
            {"action": "cancel", "source": "gw", "id": "e9"},
            {"action": "amend", "event": sent(10, "ada", tokens=100)},
        ],
    }
    done = acme.post("/v1/events/corrections", json=body)
    assert done.status_code == 200, done.text
    result = done.json()
    assert [(c["index"], c["id"], c["status"]) for c in result["corrections"]] == [
        (0, "e9", "cancelled"),
        (1, "e10", "amended"),
    ]
    assert result["seq"] and result["buckets"] >= 2
    assert usage(acme, "tokens") == {"ada": "116", "bob": "20"}
    assert usage(acme, "peak") == {"ada": "100", "bob": "8"}, "a max restated: bob's peak was the moved event"

    cancelled = acme.get("/v1/events/gw/e9").json()
    assert cancelled["status"] == "cancelled" and cancelled["event"] is None and cancelled["meters"] == []
    assert [h["change"] for h in cancelled["history"]] == ["accepted", "cancelled"]
    assert cancelled["history"][1]["reason"] == body["reason"] and cancelled["history"][1]["actor"].startswith("key:")
    amended = acme.get("/v1/events/gw/e10").json()
    assert amended["status"] == "amended" and amended["event"]["subject"] == "ada"
    assert amended["event"]["data"] == {"tokens": 100}
    assert {m["meter"]: m["value"] for m in amended["meters"]} == {"peak": "100", "tokens": "100"}
    assert amended["history"][1]["replaced"]["seq"] == amended["history"][0]["commit"]

    expected = {f"e{n}" for n in range(1, 11)} - {"e9"}
    found = search(acme)
    assert {e["id"] for e in found} == expected and len(found) == len(expected), "each event once, as it is now"
    assert next(e for e in found if e["id"] == "e10")["subject"] == "ada"
    wait_for_export(data_dir, result["seq"])
    assert search(acme) == found, "the export's corrections file leaves the old versions out"
    corrections = pq.read_table(data_dir / "export" / "corrections" / "tenant=acme").to_pylist()
    assert [(c["id"], c["action"], c["seq"]) for c in corrections] == [
        ("e9", "cancel", result["seq"]),
        ("e10", "amend", result["seq"]),
    ]

    # A retry changes nothing; a correction with a bad item changes nothing either.
    again = acme.post("/v1/events/corrections", json=body).json()
    assert again["seq"] is None and [c["status"] for c in again["corrections"]] == ["unchanged", "unchanged"]
    bad = acme.post(
        "/v1/events/corrections",
        json={
            "reason": "typo",
            "items": [
                {"action": "cancel", "source": "gw", "id": "e1"},
                {"action": "cancel", "source": "gw", "id": "nope"},
                {"action": "amend", "event": sent(9, "ada", tokens=1)},
            ],
        },
    )
    assert bad.status_code == 422 and bad.json()["code"] == "batch_rejected"
    assert [(i["index"], i["code"]) for i in bad.json()["issues"]] == [(1, "not_found"), (2, "cancelled")]
    assert usage(acme, "tokens") == {"ada": "116", "bob": "20"}


def test_a_correction_needs_a_reason_and_the_ingest_scope(server: Server, acme: httpx.Client) -> None:
    no_reason = acme.post("/v1/events/corrections", json={"reason": "", "items": [{"action": "cancel"}]})
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["message"]
    with server.client(server.tenant_key("acme", ["read"])) as reader:
        item = {"action": "cancel", "source": "gw", "id": "e1"}
        refused = reader.post("/v1/events/corrections", json={"reason": "x", "items": [item]})
        assert refused.status_code == 403
    with server.client(server.tenant_key("globex", ["ingest", "read"])) as other:
        item = {"action": "cancel", "source": "gw", "id": "e2"}
        missing = other.post("/v1/events/corrections", json={"reason": "x", "items": [item]})
        assert missing.status_code == 422 and missing.json()["issues"][0]["code"] == "not_found"
    assert acme.get("/v1/events/gw/e2").json()["status"] == "counted"


def test_a_backfill_replaces_a_range_and_its_revert_puts_it_back(data_dir: Path, acme: httpx.Client) -> None:
    start, end = RECENT + timedelta(seconds=1), RECENT + timedelta(seconds=5)  # bob's e2 and e4 in range
    opened = acme.post(
        "/v1/backfills",
        json={"id": "bf-bob", "start": start.isoformat(), "end": end.isoformat(), "customer": "bob", "reason": "fix"},
    )
    assert opened.status_code == 201, opened.text
    before = usage(acme, "tokens")
    staged = acme.post("/v1/backfills/bf-bob/events", json=[sent(4, "bob", tokens=400), sent(77, "bob", tokens=7)])
    assert staged.status_code == 422, "e77's time is outside the range"
    assert staged.json()["issues"][0]["index"] == 1 and staged.json()["issues"][0]["code"] == "out_of_range"
    replacement = sent(3, "bob", tokens=3) | {"id": "n3"}
    assert acme.post("/v1/backfills/bf-bob/events", json=[sent(4, "bob", tokens=400), replacement]).json() == {
        "staged": 2,
        "events": 2,
    }
    closed = acme.post("/v1/backfills/bf-bob/close").json()
    assert (closed["status"], closed["cancelled"], closed["amended"], closed["added"]) == ("closed", 1, 1, 1)
    assert usage(acme, "tokens")["bob"] == str(int(before["bob"]) - 2 - 4 + 400 + 3)
    assert acme.get("/v1/events/gw/n3").json()["history"][0]["change"] == "added"
    wait_for_export(data_dir, closed["seq"])
    ids = {e["id"] for e in search(acme, subject="bob")}
    assert "e2" not in ids and {"e4", "n3"} <= ids

    reverted = acme.post("/v1/backfills/bf-bob/revert").json()
    assert reverted["status"] == "reverted" and usage(acme, "tokens") == before
    assert acme.get("/v1/events/gw/e2").json()["status"] == "amended", "restored: counted again, with its history"
    wait_for_export(data_dir, closed["seq"] + 1)
    ids_after = {e["id"] for e in search(acme, subject="bob")}
    assert "e2" in ids_after and "n3" not in ids_after, "the export's corrections say what counts again"
    assert acme.get("/v1/backfills/bf-bob").json()["status"] == "reverted"
    assert acme.post("/v1/backfills/bf-bob/close").status_code == 409
    assert acme.get("/v1/backfills/nope").status_code == 404


def test_the_python_client_corrects_and_backfills(server: Server, acme: httpx.Client) -> None:
    key = server.tenant_key("acme", ["ingest", "read"])
    with meter.Client(server.url, key) as client:
        client.ingest([sent(20, "cy"), sent(21, "cy"), sent(22, "cy")])
        done = client.correct("double-sent", [CancelEvent(source="gw", id="e20"), AmendEvent(event=sent(21, "cy", 5))])
        assert [c.status for c in done.corrections] == ["cancelled", "amended"]
        assert client.event("gw", "e21")["status"] == "amended" and usage(acme, "tokens")["cy"] == "27"
        with pytest.raises(ServerError) as refused:
            client.correct("again", [CancelEvent(source="gw", id="nope")])
        assert refused.value.code == "batch_rejected"
        start = RECENT + timedelta(seconds=22)
        window = {"start": start.isoformat(), "end": (start + timedelta(seconds=1)).isoformat()}
        backfill = client.open_backfill(window | {"customer": "cy", "reason": "warehouse"})
        assert client.stage_backfill(backfill["id"], [sent(22, "cy", 2)]) == {"staged": 1, "events": 1}
        assert client.close_backfill(backfill["id"])["amended"] == 1 and usage(acme, "tokens")["cy"] == "7"
        assert client.revert_backfill(backfill["id"])["status"] == "reverted" and usage(acme, "tokens")["cy"] == "27"
