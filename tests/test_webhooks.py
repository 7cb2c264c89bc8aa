"""Outgoing webhooks in process: signatures, the URL guard, and the worker with an injected clock.

Signatures are checked as the ``standardwebhooks`` library verifies them; the delivery worker runs against a fake
receiver with a clock the test moves (no real waiting, no timing asserts).

The end-to-end tests against the real server and a real receiver are in ``test_webhooks_http.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from meter.billing.store import InvoiceStore
from meter.money.events import event_seq
from meter.money.webhooks import deliveries, endpoints, guard, signing
from meter.money.webhooks.delivery import Backoff, Settings, WebhookWorker
from meter.money.webhooks.endpoints import EndpointBody, EndpointUpdate
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


# Signatures


def test_a_signature_verifies_with_the_standardwebhooks_library() -> None:
    secret = signing.new_secret()
    assert signing.valid_secret(secret) and secret.startswith("whsec_")
    body = b'{"id":"evt_000000000001","type":"invoice.paid","data":{"total":"12.50"}}'
    now = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret], "evt_000000000001", now, body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    assert headers["webhook-signature"] == Webhook(secret).sign("evt_000000000001", _at(now), body.decode())
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"12.50", b"99.99"), headers)


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    body, now = b'{"a":1}', int(datetime.now(UTC).timestamp())
    headers = signing.headers([new, old], "evt_000000000007", now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(body, headers) == Webhook(old).verify(body, headers) == {"a": 1}


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# The guard


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
        ("::ffff:169.254.169.254", "link-local (IPv4 169.254.169.254 inside IPv6)"),
        ("2002:7f00:1::1", "loopback (IPv4 127.0.0.1 inside IPv6)"),
        ("64:ff9b::a00:1", "private (IPv4 10.0.0.1 inside IPv6)"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_the_guard_refuses_every_non_public_address(address: str, why: str | None) -> None:
    assert guard.refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://example.com/hook", "insecure_webhook_url"),
        ("ftp://example.com/hook", "invalid_webhook_url"),
        ("https:///hook", "invalid_webhook_url"),
        ("https://user:pass@example.com/hook", "invalid_webhook_url"),
        ("https://example.com/hook#part", "invalid_webhook_url"),
        ("https://example.com/" + "a" * 2100, "invalid_webhook_url"),
        ("https://127.0.0.1/hook", "private_webhook_url"),
        ("https://10.0.0.1/hook", "private_webhook_url"),
        ("https://169.254.169.254/latest/meta-data/", "private_webhook_url"),
        ("https://[::1]/hook", "private_webhook_url"),
        ("https://[::ffff:127.0.0.1]/hook", "private_webhook_url"),
        ("https://localhost/hook", "private_webhook_url"),  # a name that resolves to loopback
        ("https://2130706433/hook", "private_webhook_url"),  # 127.0.0.1 as one number
        ("https://no-such-host.invalid/hook", "unresolvable_webhook_url"),
    ],
)
def test_the_guard_refuses_urls_it_cannot_send_to(url: str, code: str) -> None:
    with pytest.raises(guard.UrlRefused) as refused:
        guard.resolve(guard.check_url(url, allow_private=False), allow_private=False)
    assert refused.value.code == code
    assert "webhook" in refused.value.message


def test_allowing_private_targets_allows_http_and_loopback() -> None:
    target = guard.check_url("http://localhost:8123/hook", allow_private=True)
    assert ipaddress.ip_address("127.0.0.1") in guard.resolve(target, allow_private=True)


def test_a_delivery_connects_to_the_checked_address_with_the_real_host_name() -> None:
    target = guard.check_url("https://hooks.example.com:8443/in?x=1", allow_private=False)
    url, headers, extensions = guard.pinned(target, ipaddress.ip_address("93.184.215.14"))
    assert str(url) == "https://93.184.215.14:8443/in?x=1"
    assert headers == {"host": "hooks.example.com:8443"} and extensions == {"sni_hostname": "hooks.example.com"}
    url, _, _ = guard.pinned(target, ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c"))
    assert url.host == "2606:2800:21f:cb07:6820:80da:af6b:8b2c" and str(url).startswith("https://[2606:")


# The worker, with a fake receiver (httpx.MockTransport) and a clock the test moves


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeReceiver:
    """Answers each request with the next status of ``statuses`` (the last one repeats); records what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.requests = list(statuses), list[httpx.Request]()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return httpx.Response(status, stream=httpx.ByteStream(b"thanks" if status < 300 else b"broken"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InvoiceStore]:
    s = InvoiceStore(tmp_path / "invoices")
    yield s
    s.close()


def emit(store: InvoiceStore, tenant: str, type_: str, now: datetime, **data: object) -> str:
    with store.transaction(tenant, now) as change:
        return change.emit(type_, dict(data)).id  # type: ignore[arg-type]


def worker(store: InvoiceStore, clock: Clock, receiver: FakeReceiver, allow_private: bool = True) -> WebhookWorker:
    settings = Settings(
        allow_private=allow_private,
        backoff=Backoff(base=timedelta(minutes=1), cap=timedelta(hours=2), window=timedelta(days=3)),
    )
    return WebhookWorker(store, settings, clock=clock, rng=random.Random(7), transport=httpx.MockTransport(receiver))


def run(w: WebhookWorker, rounds: Callable[[], bool]) -> None:
    """Rounds of the worker (each waits for its attempts) until ``rounds()`` says stop."""

    async def main() -> None:
        async with w:
            while True:
                await w.round(wait=True)
                if not rounds():
                    return

    asyncio.run(main())


def the_delivery(store: InvoiceStore, tenant: str, event_id: str) -> deliveries.Delivery:
    [delivery] = deliveries.of_event(store, tenant, event_id)
    return delivery


def test_a_failing_receiver_is_retried_with_jittered_backoff_then_the_endpoint_becomes_failing(
    store: InvoiceStore,
) -> None:
    clock, receiver = Clock(T0), FakeReceiver([500])
    created = endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/hook"), allow_private=True, now=T0)
    first = emit(store, "acme", "invoice.paid", T0, id="inv-1")
    w = worker(store, clock, receiver)

    def until_given_up() -> bool:
        delivery = the_delivery(store, "acme", first)
        if delivery.status != "pending":
            return False
        assert delivery.next_attempt_at is not None
        clock.now = max(clock.now, delivery.next_attempt_at)  # straight to the next attempt: no real waiting
        return True

    run(w, until_given_up)
    delivery = the_delivery(store, "acme", first)
    assert delivery.status == "failed" and delivery.last_status == 500 and delivery.last_error == "HTTP 500"
    assert delivery.attempts == len(receiver.requests) > 10
    assert {r.headers["webhook-id"] for r in receiver.requests} == {first}, "every retry carries the event's id"
    # Full jitter: each wait is at most min(cap, base * 2^(n-1)); the last attempt falls within the window.
    times = [r.headers["webhook-timestamp"] for r in receiver.requests]
    assert times == sorted(times)
    assert delivery.last_attempt_at is not None and delivery.last_attempt_at <= T0 + timedelta(days=3)
    history = delivery.history
    for n, (a, b) in enumerate(zip(history, history[1:], strict=False), start=delivery.attempts - len(history) + 1):
        assert timedelta(0) <= b.at - a.at <= timedelta(minutes=min(120, 2 ** min(n - 1, 20)))
    assert endpoints.get(store, "acme", created.id).status == "failing"

    # Failing: no automatic delivery. A new event is recorded failed without a request; nothing is lost.
    second = emit(store, "acme", "invoice.paid", clock.now, id="inv-2")
    sent = len(receiver.requests)
    run(w, lambda: False)
    assert len(receiver.requests) == sent
    assert the_delivery(store, "acme", second).status == "failed"
    with pytest.raises(Exception, match="enable it first"):
        deliveries.replay_endpoint(store, "acme", created.id, T0, now=clock.now)

    # Enabled again, the receiver fixed: a replay of what failed since T0 delivers both, and nothing else.
    endpoints.update(store, "acme", created.id, EndpointUpdate(enabled=True), allow_private=True, now=clock.now)
    receiver.statuses = [200]
    assert deliveries.replay_endpoint(store, "acme", created.id, T0, now=clock.now) == deliveries.Replayed(2)
    run(w, lambda: False)
    assert [the_delivery(store, "acme", e).status for e in (first, second)] == ["delivered", "delivered"]
    assert sorted(r.headers["webhook-id"] for r in receiver.requests[sent:]) == [first, second]
    assert endpoints.get(store, "acme", created.id).status == "enabled"


def test_the_guard_is_checked_again_at_delivery(store: InvoiceStore) -> None:
    """An endpoint registered while private targets were allowed is refused once they are not: no request is made."""
    clock, receiver = Clock(T0), FakeReceiver([200])
    endpoints.create(store, "acme", EndpointBody("https://127.0.0.1:9/hook"), allow_private=True, now=T0)
    event = emit(store, "acme", "invoice.finalized", T0)
    run(worker(store, clock, receiver, allow_private=False), lambda: False)
    delivery = the_delivery(store, "acme", event)
    assert receiver.requests == []
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.last_error is not None and delivery.last_error.startswith("private_webhook_url: ")


def test_an_endpoint_gets_only_its_types_and_only_events_after_it_was_created(store: InvoiceStore) -> None:
    clock, receiver = Clock(T0), FakeReceiver([204])
    emit(store, "acme", "invoice.paid", T0)  # before any endpoint: never delivered
    paid_only = endpoints.create(
        store, "acme", EndpointBody("http://127.0.0.1:9/paid", types=["invoice.paid"]), allow_private=True, now=T0
    )
    every = endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/all"), allow_private=True, now=T0)
    disabled = endpoints.create(
        store, "acme", EndpointBody("http://127.0.0.1:9/off", enabled=False), allow_private=True, now=T0
    )
    emit(store, "acme", "invoice.finalized", T0)
    emit(store, "acme", "invoice.paid", T0)
    emit(store, "globex", "invoice.paid", T0)  # another tenant's: it has no endpoint
    run(worker(store, clock, receiver), lambda: False)
    got = sorted((r.url.path, json.loads(r.content)["type"]) for r in receiver.requests)
    assert got == [("/all", "invoice.finalized"), ("/all", "invoice.paid"), ("/paid", "invoice.paid")]
    assert {r.headers["host"] for r in receiver.requests} == {"127.0.0.1:9"}
    assert [len(deliveries.of_endpoint(store, "acme", e.id).data) for e in (paid_only, every, disabled)] == [1, 2, 0]
    assert "secret" not in msgspec.json.encode(endpoints.list_endpoints(store, "acme")).decode()


def test_a_body_is_the_event_as_stored_and_every_attempt_signs_it_anew(store: InvoiceStore) -> None:
    clock, receiver = Clock(datetime.now(UTC)), FakeReceiver([503, 200])
    created = endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True)
    event = emit(store, "acme", "credit_note.created", clock.now, amount="5.00")
    w = worker(store, clock, receiver)

    def step() -> bool:
        delivery = the_delivery(store, "acme", event)
        if delivery.next_attempt_at is not None:
            clock.now = max(clock.now, delivery.next_attempt_at)
        return delivery.status == "pending"

    run(w, step)
    first, second = receiver.requests
    assert first.content == second.content == store.raw(f"outbox/acme/{event_seq(event):012d}")
    for request in (first, second):
        assert Webhook(created.secret).verify(request.content, dict(request.headers))["data"] == {"amount": "5.00"}
    delivery = the_delivery(store, "acme", event)
    assert [a.status for a in delivery.history] == [503, 200] and delivery.history[1].response == "thanks"
    assert delivery.status == "delivered" and delivery.delivered_at is not None
    assert w.outcomes == {"pending": 1, "delivered": 1}, "what /metrics counts: a retry scheduled, then delivered"


def test_a_backlog_is_fanned_out_once_and_delivered_once_round_after_round(store: InvoiceStore) -> None:
    clock, receiver = Clock(datetime.now(UTC)), FakeReceiver([200])
    endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True)
    with store.transaction("acme", clock.now) as change:  # one write: 1,200 events
        ids = [change.emit("invoice.created", {"n": n}).id for n in range(1200)]
    w = worker(store, clock, receiver)
    busy: list[bool] = []

    async def main() -> None:
        async with w:
            while not busy or busy[-1]:
                busy.append(await w.round(wait=True))

    asyncio.run(main())
    assert busy[0] is True and busy[-1] is False, "a round takes at most 100 due deliveries per tenant"
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(ids), "each exactly once"
    page = deliveries.of_endpoint(store, "acme", endpoints.list_endpoints(store, "acme")[0].id, "delivered", 1000)
    assert len(page.data) == 1000 and page.next is not None


def test_a_tenant_has_at_most_20_endpoints(store: InvoiceStore) -> None:
    for n in range(endpoints.MAX_ENDPOINTS):
        endpoints.create(store, "acme", EndpointBody(f"http://127.0.0.1:9/{n}"), allow_private=True)
    with pytest.raises(Exception, match="delete one first") as refused:
        endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/more"), allow_private=True)
    assert getattr(refused.value, "code", None) == "too_many_endpoints"
    endpoints.create(store, "globex", EndpointBody("http://127.0.0.1:9/0"), allow_private=True)  # per tenant


def test_a_deleted_endpoints_pending_delivery_fails_and_is_never_sent(store: InvoiceStore) -> None:
    clock, receiver = Clock(T0), FakeReceiver([200])
    created = endpoints.create(store, "acme", EndpointBody("http://127.0.0.1:9/h"), allow_private=True, now=T0)
    event = emit(store, "acme", "invoice.voided", T0)
    w = worker(store, clock, receiver)
    deliveries.fan_out(store, "acme", T0)  # the delivery is made, but not yet attempted
    endpoints.delete(store, "acme", created.id)  # the tenant's last endpoint
    run(w, lambda: False)
    delivery = the_delivery(store, "acme", event)
    assert receiver.requests == [] and delivery.status == "failed"
    assert delivery.last_error == "not sent: the endpoint was deleted"
