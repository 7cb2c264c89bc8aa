"""Outgoing webhooks end to end: the real server (`meter serve`), a real receiver on 127.0.0.1, events from invoices.

The server runs with ``--allow-private-webhooks`` (the receiver is local) and test-only settings: a backoff of at
most 0.2 s, a 0.5 s timeout, a round every 0.05 s. Nothing waits for a fixed time: every wait polls for a state, and
nothing asserts how long anything took. The guard's refusals are checked against a server without the option.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from http_server import Server, free_port
from meter.cli import main
from meter.money.events import event_seq
from standardwebhooks.webhooks import Webhook
from webhook_receiver import Answer, Receiver, wait_for

FAST = {
    "METER_WEBHOOK_RETRY_BASE": "0.05",
    "METER_WEBHOOK_RETRY_CAP": "0.2",
    "METER_WEBHOOK_TIMEOUT": "0.5",
    "METER_WEBHOOK_POLL": "0.05",
}
PRIVATE = ("--allow-private-webhooks",)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("webhooks"), args=PRIVATE, env=FAST)
    yield s
    s.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def billing_tenant(server: Server, tenant: str, scopes: tuple[str, ...] = ("read", "admin")) -> httpx.Client:
    """A tenant with one subscription (20 EUR a month in advance): each invoice run emits `invoice.created`."""
    client = server.client(server.tenant_key(tenant, list(scopes)))
    assert client.post("/v1/customers", json={"id": "c1", "name": "One", "currency": "EUR"}).status_code == 200
    assert client.post("/v1/plans", json={"id": "pro", "name": "Pro"}).status_code == 201
    prices = [{"id": "base", "currency": "EUR", "model": "flat", "amount": "20", "cadence": "in_advance"}]
    r = client.post("/v1/plans/pro/versions", json={"effective_from": "2020-01-01T00:00:00Z", "prices": prices})
    assert r.status_code == 201, r.text
    sub = {"id": "s1", "customer": "c1", "plan": "pro", "version": 1, "start": "2026-10-01T00:00:00Z"}
    assert client.post("/v1/subscriptions", json=sub).status_code == 200
    return client


def endpoint(client: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    r = client.post("/v1/webhook-endpoints", json={"url": url, **fields})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def invoice_run(client: httpx.Client, period: str) -> tuple[str, str]:
    """Runs a month: (the draft's id, the id of the `invoice.created` event it emitted)."""
    r = client.post("/v1/invoices/run", json={"period": period})
    assert r.status_code == 200 and r.json()["errors"] == [], r.text
    [draft] = r.json()["invoices"]
    [event] = client.get("/v1/webhook-events", params={"type": "invoice.created", "limit": 1}).json()["data"]
    assert event["data"]["id"] == draft["id"]
    return draft["id"], event["id"]


def delivery_of(client: httpx.Client, event_id: str, endpoint_id: str) -> dict[str, Any] | None:
    r = client.get(f"/v1/webhook-events/{event_id}/deliveries")
    assert r.status_code == 200, r.text
    return next((d for d in r.json() if d["endpoint"] == endpoint_id), None)


def delivered(client: httpx.Client, event_id: str, endpoint_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        d = delivery_of(client, event_id, endpoint_id)
        return d if d is not None and d["status"] == "delivered" else None

    found: dict[str, Any] = wait_for(f"{event_id} delivered to {endpoint_id}", check)
    return found


def test_a_delivery_is_signed_the_standard_webhooks_way(server: Server, receiver: Receiver) -> None:
    client = billing_tenant(server, "signed")
    every = endpoint(client, receiver.url("/all"), description="ERP")
    finalized = endpoint(client, receiver.url("/finalized"), types=["invoice.finalized"])
    assert every["secret"].startswith("whsec_") and every["status"] == "enabled" and every["types"] is None
    # The secret is shown once: no listing shows it.
    for path in ("/v1/webhook-endpoints", f"/v1/webhook-endpoints/{every['id']}"):
        text = client.get(path).text
        assert every["secret"] not in text and finalized["secret"] not in text and "secret" not in text

    draft, created = invoice_run(client, "2026-11")
    assert client.post(f"/v1/invoices/{draft}/finalize").status_code == 200
    wait_for("three deliveries", lambda: len(receiver.requests) == 3)
    secrets = {"/all": every["secret"], "/finalized": finalized["secret"]}
    seen = []
    for request in receiver.requests:
        payload = Webhook(secrets[request.path]).verify(request.body, request.headers)  # the customer's check
        assert payload["id"] == request.headers["webhook-id"]
        assert payload == client.get(f"/v1/webhook-events/{payload['id']}").json()
        assert request.headers["content-type"] == "application/json"
        seen.append((request.path, payload["type"]))
    assert sorted(seen) == [
        ("/all", "invoice.created"),
        ("/all", "invoice.finalized"),
        ("/finalized", "invoice.finalized"),
    ]
    log = delivered(client, created, every["id"])
    assert (log["attempts"], log["last_status"], log["type"]) == (1, 200, "invoice.created")
    page = client.get(f"/v1/webhook-endpoints/{every['id']}/deliveries", params={"limit": 1}).json()
    assert [d["type"] for d in page["data"]] == ["invoice.finalized"] and page["next"] is not None, "newest first"
    rest = client.get(f"/v1/webhook-endpoints/{every['id']}/deliveries", params={"after": page["next"]}).json()
    assert [d["event"] for d in rest["data"]] == [created] and rest["next"] is None


def test_after_a_rotation_deliveries_verify_with_the_new_secret_and_for_a_while_the_old(
    server: Server, receiver: Receiver
) -> None:
    client = billing_tenant(server, "rotated")
    target = endpoint(client, receiver.url())
    r = client.post(f"/v1/webhook-endpoints/{target['id']}/rotate-secret")
    assert r.status_code == 200 and r.json()["secret"] != target["secret"], r.text
    assert r.json()["secret"] not in client.get(f"/v1/webhook-endpoints/{target['id']}").text
    _, event = invoice_run(client, "2026-11")
    delivered(client, event, target["id"])
    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (r.json()["secret"], target["secret"]):
        assert Webhook(secret).verify(request.body, request.headers)["id"] == event


def test_a_receiver_answering_500_gets_the_event_again_until_it_answers_2xx(server: Server) -> None:
    receiver = Receiver([Answer(500), Answer(502, body=b"bad gateway"), Answer(200)])
    try:
        client = billing_tenant(server, "flaky")
        target = endpoint(client, receiver.url())
        _, event = invoice_run(client, "2026-11")
        log = delivered(client, event, target["id"])
        assert [a["status"] for a in log["history"]] == [500, 502, 200] and log["attempts"] == 3
        assert log["history"][1]["response"] == "bad gateway" and log["history"][1]["error"] == "HTTP 502"
        assert len(receiver.requests) == 3, "delivered: never sent again"
        assert {r.headers["webhook-id"] for r in receiver.requests} == {event}
        assert len({r.body for r in receiver.requests}) == 1, "the same bytes at every attempt"
    finally:
        receiver.stop()


def test_a_receiver_that_is_down_loses_nothing(server: Server) -> None:
    port = free_port()  # nothing listens there yet
    client = billing_tenant(server, "down")
    target = endpoint(client, f"http://127.0.0.1:{port}/hook")
    _, event = invoice_run(client, "2026-11")

    def failed_twice() -> bool:
        d = delivery_of(client, event, target["id"])
        return d is not None and d["attempts"] >= 2

    wait_for("two failed attempts", failed_twice)
    d = delivery_of(client, event, target["id"])
    assert d is not None and d["status"] == "pending" and d["last_error"].startswith("connection failed")
    receiver = Receiver(port=port)  # the receiver comes back
    try:
        delivered(client, event, target["id"])
        assert [r.headers["webhook-id"] for r in receiver.requests] == [event]
    finally:
        receiver.stop()


def test_a_slow_receiver_times_out_and_gets_it_again(server: Server) -> None:
    receiver = Receiver([Answer(delay=3), Answer()])
    try:
        client = billing_tenant(server, "slow")
        target = endpoint(client, receiver.url())
        _, event = invoice_run(client, "2026-11")
        log = delivered(client, event, target["id"])
        first, second = log["history"]
        assert first["status"] is None and first["error"] == "timeout: no answer within 0.5 s"
        assert second["status"] == 200
    finally:
        receiver.stop()


def test_an_endless_answer_is_read_up_to_the_limit_only(server: Server) -> None:
    receiver = Receiver([Answer(endless=True)])
    try:
        client = billing_tenant(server, "chatty")
        target = endpoint(client, receiver.url())
        _, event = invoice_run(client, "2026-11")
        log = delivered(client, event, target["id"])  # the status decides; the body is only logged
        response = log["history"][0]["response"]
        assert response.endswith(" [cut]") and len(response) == 1024 + len(" [cut]")
        assert receiver.streamed < receiver.endless_cap, "the server stopped reading"
    finally:
        receiver.stop()


def test_a_restart_loses_nothing_and_resends_at_most_the_attempt_in_flight(tmp_path: Path) -> None:
    release = threading.Event()
    receiver = Receiver([Answer(500), Answer(hold=release), Answer(200)])
    first = Server(tmp_path / "data", args=PRIVATE, env=FAST)
    try:
        client = billing_tenant(first, "restart")
        key = client.headers["authorization"].removeprefix("Bearer ")
        target = endpoint(client, receiver.url())
        _, event = invoice_run(client, "2026-11")
        # The 500 is recorded before the next attempt starts; the second attempt is held in flight.
        wait_for("the second attempt", lambda: len(receiver.requests) == 2)
    finally:
        first.kill()  # a crash: no shutdown of any kind, the attempt in flight unrecorded
        for c in first.clients:
            c.close()
        release.set()
    second = Server(tmp_path / "data", admin_key=first.admin_key, args=PRIVATE, env=FAST)
    try:
        log = delivered(second.client(key), event, target["id"])
        assert [a["status"] for a in log["history"]] == [500, 200], "the attempt in flight was never recorded"
        assert len(receiver.requests) == 3 and {r.headers["webhook-id"] for r in receiver.requests} == {event}
    finally:
        second.stop()
        receiver.stop()


def test_replay_sends_an_event_again(server: Server, receiver: Receiver) -> None:
    client = billing_tenant(server, "replay")
    target = endpoint(client, receiver.url("/a"))
    _, event = invoice_run(client, "2026-11")
    delivered(client, event, target["id"])
    later = endpoint(client, receiver.url("/b"))  # created after the event: it never got it

    r = client.post(f"/v1/webhook-events/{event}/replay", json={})
    assert r.status_code == 200 and r.json() == {"replayed": 1, "more": False}
    r = client.post(f"/v1/webhook-events/{event}/replay", json={"endpoint": later["id"]})
    assert r.status_code == 200 and r.json()["replayed"] == 1
    wait_for("the replays", lambda: len(receiver.requests) == 3)
    assert sorted(r.path for r in receiver.requests) == ["/a", "/a", "/b"]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {event}, "receivers dedupe on webhook-id"
    assert delivered(client, event, later["id"])["attempts"] == 1

    # A disabled endpoint is not replayed to: enable it first.
    assert client.post(f"/v1/webhook-endpoints/{later['id']}", json={"enabled": False}).json()["status"] == "disabled"
    for path, body in (
        (f"/v1/webhook-endpoints/{later['id']}/replay", {"since": "2026-01-01T00:00:00Z"}),
        (f"/v1/webhook-events/{event}/replay", {"endpoint": later["id"]}),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 400 and r.json()["code"] == "endpoint_not_enabled" and "enable it" in r.text


def test_a_tenant_never_sees_or_replays_another_tenants_webhooks(server: Server, receiver: Receiver) -> None:
    a, b = billing_tenant(server, "tenant-a"), billing_tenant(server, "tenant-b")
    a_endpoint = endpoint(a, receiver.url("/a"))
    b_endpoint = endpoint(b, receiver.url("/b"))
    _, a_first = invoice_run(a, "2026-11")
    _, a_second = invoice_run(a, "2026-12")
    _, b_first = invoice_run(b, "2026-11")
    assert event_seq(a_first) == event_seq(b_first) == 1 and a_first != b_first, "numbered per tenant, unique ids"
    delivered(a, a_second, a_endpoint["id"])
    delivered(b, b_first, b_endpoint["id"])

    ep = a_endpoint["id"]
    for method, path, body in (
        ("GET", f"/v1/webhook-endpoints/{ep}", None),
        ("POST", f"/v1/webhook-endpoints/{ep}", {"enabled": False}),
        ("POST", f"/v1/webhook-endpoints/{ep}/rotate-secret", None),
        ("GET", f"/v1/webhook-endpoints/{ep}/deliveries", None),
        ("POST", f"/v1/webhook-endpoints/{ep}/replay", {"since": "2020-01-01T00:00:00Z"}),
        ("DELETE", f"/v1/webhook-endpoints/{ep}", None),
        ("GET", f"/v1/webhook-events/{a_second}", None),
        ("GET", f"/v1/webhook-events/{a_second}/deliveries", None),
        ("POST", f"/v1/webhook-events/{a_second}/replay", {}),
        ("POST", f"/v1/webhook-events/{b_first}/replay", {"endpoint": ep}),
    ):
        r = b.request(method, path, json=body)
        assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
    assert [e["id"] for e in b.get("/v1/webhook-endpoints").json()] == [b_endpoint["id"]]
    assert {e["tenant"] for e in b.get("/v1/webhook-events").json()["data"]} == {"tenant-b"}
    assert [d["endpoint"] for d in b.get(f"/v1/webhook-events/{b_first}/deliveries").json()] == [b_endpoint["id"]]
    by_path = {(r.path, r.headers["webhook-id"]) for r in receiver.requests}
    assert by_path == {("/a", a_first), ("/a", a_second), ("/b", b_first)}
    assert a.get(f"/v1/webhook-endpoints/{ep}").json()["status"] == "enabled", "B changed nothing of A's"

    # Scopes: changing needs admin, looking needs read.
    reader = server.client(server.tenant_key("tenant-a", ["read"]))
    assert reader.post("/v1/webhook-endpoints", json={"url": receiver.url()}).status_code == 403
    assert reader.get(f"/v1/webhook-endpoints/{ep}/deliveries").status_code == 200
    ingest = server.client(server.tenant_key("tenant-a", ["ingest"]))
    assert ingest.get("/v1/webhook-events").status_code == 403


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1/hook", "insecure_webhook_url"),
        ("https://127.0.0.1/hook", "private_webhook_url"),
        ("https://10.0.0.1/hook", "private_webhook_url"),
        ("https://192.168.0.10/hook", "private_webhook_url"),
        ("https://169.254.169.254/latest/meta-data/", "private_webhook_url"),
        ("https://[::1]/hook", "private_webhook_url"),
        ("https://[::ffff:10.0.0.1]/hook", "private_webhook_url"),
        ("https://localhost:8443/hook", "private_webhook_url"),
        ("https://user:secret@example.com/hook", "invalid_webhook_url"),
        ("file:///etc/passwd", "invalid_webhook_url"),
    ],
)
def test_private_and_insecure_urls_are_refused_at_registration(strict: httpx.Client, url: str, code: str) -> None:
    r = strict.post("/v1/webhook-endpoints", json={"url": url})
    assert r.status_code == 400 and r.json()["code"] == code, r.text
    assert "webhook" in r.json()["message"]
    assert strict.get("/v1/webhook-endpoints").json() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/v1/webhook-endpoints", {"url": "https://example.com/h", "types": []}, "invalid_body"),
        ("POST", "/v1/webhook-endpoints", {"url": "https://example.com/h", "types": ["invoice.eaten"]}, "invalid_body"),
        ("POST", "/v1/webhook-endpoints", {"url": "https://example.com/h", "secret": "whsec_mine"}, "invalid_body"),
        ("POST", "/v1/webhook-endpoints/we_1/replay", {"since": "2026-01-01T00:00:00"}, "invalid_body"),
        ("GET", "/v1/webhook-events?limit=0", None, "invalid_query"),
        ("GET", "/v1/webhook-events?after=yesterday", None, "invalid_query"),
    ],
)
def test_bad_webhook_input_is_400(strict: httpx.Client, method: str, path: str, body: Any, code: str) -> None:
    r = strict.request(method, path, json=body)
    assert r.status_code == 400 and r.json()["code"] == code, r.text


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A server with private targets refused (the default), and a tenant's admin client."""
    s = Server(tmp_path_factory.mktemp("strict"), env=FAST)
    yield s.client(s.tenant_key("strict", ["read", "admin"]))
    s.stop()


def test_the_cli_manages_endpoints_and_reads_the_log(server: Server, receiver: Receiver) -> None:
    client = billing_tenant(server, "cli")
    key = client.headers["authorization"].removeprefix("Bearer ")
    env = {"METER_URL": server.url, "METER_API_KEY": key, "COLUMNS": "250"}

    def meter(*args: str) -> str:
        result = CliRunner().invoke(main, ["webhooks", *args], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    out = meter("create", receiver.url(), "--type", "invoice.created", "--description", "ERP")
    assert "signing secret (shown once, store it now): whsec_" in out
    endpoint_id = out.split()[1]
    assert endpoint_id.startswith("we_") and "invoice.created" in meter("list")
    _, event = invoice_run(client, "2026-11")
    delivered(client, event, endpoint_id)
    assert event in meter("events", "--type", "invoice.created")
    assert "delivered" in meter("deliveries", endpoint_id) and "delivered" in meter("deliveries", "--event", event)
    assert "1 deliveries queued again" in meter("replay", "--event", event)
    assert f"{endpoint_id}: disabled" in meter("disable", endpoint_id)
    assert f"{endpoint_id}: enabled" in meter("enable", endpoint_id)
    assert "whsec_" in meter("rotate-secret", endpoint_id)
    assert "deleted" in meter("delete", endpoint_id)
    bad = CliRunner().invoke(main, ["webhooks", "show", endpoint_id], env=env)
    assert bad.exit_code == 1 and "404 not_found" in bad.output
