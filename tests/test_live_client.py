"""The client's alert and reservation methods against the real server (`meter serve`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from http_server import Server
from meter.client import Client, ServerError


def test_alerts_and_reservations_through_the_client(tmp_path: Path) -> None:
    server = Server(tmp_path / "data")
    try:
        with Client(server.url, server.tenant_key("acme", ["ingest", "read", "admin"])) as client:
            client.create_meter({"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.n"})
            client.put_catalog_item("customers", {"id": "c1", "name": "One", "currency": "EUR"})
            alert = {"id": "spend-50", "kind": "spend", "thresholds": ["50", "100"], "plan": None}
            created = client.create_alert(alert)
            assert created["thresholds"] == ["50", "100"] and created["kind"] == "spend"
            assert client.list_alerts() == [created]
            with pytest.raises(ServerError) as refused:
                client.create_alert({"id": "x", "kind": "usage", "thresholds": ["1"]})
            assert (refused.value.status, refused.value.code) == (400, "invalid_catalog")
            client.delete_alert("spend-50")
            assert client.list_alerts() == []

            with pytest.raises(ServerError) as unknown:
                client.reserve("ghost", "job-1", "balance", "1.00")
            assert (unknown.value.status, unknown.value.code) == (404, "not_found")
            with pytest.raises(ServerError) as missing:
                client.settle_reservation("job-1", "1")
            assert missing.value.status == 404
            with pytest.raises(ServerError) as missing:
                client.release_reservation("job-1")
            assert missing.value.status == 404
    finally:
        server.stop()
