"""Drop-in ingest: the five vendors' own SDKs (pinned in requirements-dev.txt), pointed at a real server.

Each SDK sends batches, sends them again (a retry counts nothing twice), sends timestamps in the forms it sends, and
meets its error paths (a bad key, a bad event, too many events) in its own exception classes. A refused request
counted nothing. The check is the usage the meter reports: the events' tokens, by customer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import lago_python_client
import metronome
import msgspec
import openmeter
import orb
import pytest
import stripe
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from http_server import RECENT, RECENT_DAY, Server
from lago_python_client.exceptions import LagoApiError
from lago_python_client.models import BatchEvent, Event
from meter.catalog.billing import BillingCatalog, Customer
from meter.catalog.keys import KeyStore
from meter.exceptions import AlreadyExists

pytestmark = pytest.mark.timeout(180)

#: Customers, each named by another id in one vendor: its alias, its stripe_customer, or its subscription's id.
CUSTOMERS = [
    {"id": "c-open", "name": "OpenMeter user", "currency": "USD"},
    {"id": "c-metro", "name": "Metronome user", "currency": "USD", "aliases": ["metronome-uuid-1"]},
    {"id": "c-orb", "name": "Orb user", "currency": "USD", "aliases": ["orb-external-1"]},
    {"id": "c-lago", "name": "Lago user", "currency": "USD"},
    {"id": "c-stripe", "name": "Stripe user", "currency": "USD", "stripe_customer": "cus_stripe1"},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("dropin"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    key = server.tenant_key("acme", ["ingest", "read", "admin"])
    with server.client(key) as c:
        for customer in CUSTOMERS:
            assert c.post("/v1/customers", json=customer).status_code == 200
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        assert c.post("/v1/meters", json=meter).status_code == 201
        assert c.post("/v1/plans", json={"id": "p", "name": "p"}).status_code == 201
        version = {"effective_from": "2020-01-01T00:00:00Z", "prices": []}
        assert c.post("/v1/plans/p/versions", json=version).status_code == 201
        sub = {"id": "lago-sub-1", "customer": "c-lago", "plan": "p", "version": 1, "start": "2020-01-01T00:00:00Z"}
        assert c.post("/v1/subscriptions", json=sub).status_code == 200
    return key


def tokens(server: Server, key: str, customer: str) -> Decimal:
    """What the meter counted for ``customer`` from RECENT's day on (an event without a time counts at receipt)."""
    with server.client(key) as c:
        params = {"from": RECENT_DAY[0].isoformat(), "to": (RECENT_DAY[1] + timedelta(days=1)).isoformat()}
        params["subject"] = customer
        rows = c.get("/v1/meters/tokens/usage", params=params).json()["data"]
    return sum((Decimal(str(r["value"])) for r in rows), Decimal(0))


def iso(offset: str = "Z", minutes: int = 0) -> str:
    return (RECENT + timedelta(minutes=minutes)).isoformat().replace("+00:00", offset)


# ------------------------------------------------------------------------------------------------------ OpenMeter


def test_openmeter_sdk(server: Server, key: str) -> None:
    client: Any = openmeter.Client(endpoint=f"{server.url}/compat/openmeter", token=key)
    batch: list[Any] = [
        {"specversion": "1.0", "id": f"om-{n}", "source": "gw", "type": "llm", "subject": "c-open"}
        | {"time": iso(minutes=n), "data": {"tokens": 10 * n}}
        for n in (1, 2, 3)
    ]
    client.events.ingest_events(batch)
    client.events.ingest_events(batch)  # a retry: duplicates, a success
    client.events.ingest_event({**batch[0], "id": "om-4", "time": iso("+00:00")})
    assert tokens(server, key, "c-open") == 70

    bad = [{**batch[0], "id": "om-5"}, {k: v for k, v in batch[0].items() if k != "subject"} | {"id": "om-6"}]
    with pytest.raises(HttpResponseError) as refused:
        client.events.ingest_events(bad)
    assert refused.value.status_code == 400
    response: Any = refused.value.response
    problem = response.json()
    assert problem["status"] == 400 and problem["issues"][0]["index"] == 1, problem
    assert "#1" in problem["detail"] and response.headers["content-type"] == "application/problem+json"
    assert tokens(server, key, "c-open") == 70, "a refused batch counted nothing"

    with pytest.raises(ClientAuthenticationError):
        openmeter.Client(endpoint=f"{server.url}/compat/openmeter", token="mk_live_wrong").events.ingest_event(batch[0])


# ------------------------------------------------------------------------------------------------------ Metronome


def test_metronome_sdk(server: Server, key: str) -> None:
    client: Any = metronome.Metronome(bearer_token=key, base_url=f"{server.url}/compat/metronome", max_retries=0)
    usage: list[dict[str, Any]] = [
        {"transaction_id": "m-1", "customer_id": "metronome-uuid-1", "event_type": "llm", "timestamp": iso()}
        | {"properties": {"tokens": "5"}},
        {"transaction_id": "m-2", "customer_id": "c-metro", "event_type": "llm", "timestamp": iso("+00:00", 1)}
        | {"properties": {"tokens": 7}},
    ]
    client.v1.usage.ingest(usage=usage)
    client.v1.usage.ingest(usage=usage)
    assert tokens(server, key, "c-metro") == 12, "the alias and the id name the same customer; the retry is free"

    with pytest.raises(metronome.BadRequestError) as refused:
        client.v1.usage.ingest(usage=[{**usage[0], "transaction_id": "m-3"}, {"transaction_id": "m-4"}])
    body = refused.value.body
    assert isinstance(body, dict) and body["issues"][0]["index"] == 1, body
    with pytest.raises(metronome.BadRequestError, match="the limit is 100"):
        client.v1.usage.ingest(usage=[{**usage[0], "transaction_id": f"m-x{n}"} for n in range(101)])
    stranger: Any = metronome.Metronome(bearer_token="nope", base_url=f"{server.url}/compat/metronome")
    with pytest.raises(metronome.AuthenticationError):
        stranger.v1.usage.ingest(usage=usage)
    assert tokens(server, key, "c-metro") == 12


# ------------------------------------------------------------------------------------------------------------ Orb


def test_orb_sdk(server: Server, key: str) -> None:
    client: Any = orb.Orb(api_key=key, base_url=f"{server.url}/compat/orb/v1", max_retries=0)
    events: list[Any] = [
        {"event_name": "llm", "idempotency_key": "o-1", "external_customer_id": "orb-external-1"}
        | {"timestamp": RECENT, "properties": {"tokens": 3, "cached": True}},
        {"event_name": "llm", "idempotency_key": "o-2", "customer_id": "c-orb"}
        | {"timestamp": RECENT.replace(tzinfo=None), "properties": {"tokens": 4}},
    ]
    assert client.events.ingest(events=events).validation_failed == []
    assert client.events.ingest(events=events).validation_failed == []
    assert tokens(server, key, "c-orb") == 7

    both = {**events[1], "idempotency_key": "o-3", "external_customer_id": "orb-external-1"}
    with pytest.raises(orb.RequestValidationError) as refused:
        client.events.ingest(events=[{**events[1], "idempotency_key": "o-4"}, both])
    body = refused.value.body
    assert isinstance(body, dict) and body["validation_failed"][0]["idempotency_key"] == "o-3", body
    with pytest.raises(orb.RequestValidationError, match="the limit is 500"):
        client.events.ingest(events=[{**events[1], "idempotency_key": f"o-x{n}"} for n in range(501)])
    with pytest.raises(orb.AuthenticationError):
        orb.Orb(api_key="nope", base_url=f"{server.url}/compat/orb/v1").events.ingest(events=events)
    assert tokens(server, key, "c-orb") == 7


def test_orb_amends_and_deprecates(server: Server, key: str) -> None:
    client: Any = orb.Orb(api_key=key, base_url=f"{server.url}/compat/orb/v1", max_retries=0)
    sent = {"event_name": "llm", "customer_id": "c-orb", "timestamp": RECENT}
    client.events.ingest(
        events=[
            sent | {"idempotency_key": "oa-1", "properties": {"tokens": 10}},
            sent | {"idempotency_key": "oa-2", "properties": {"tokens": 20}},
        ]
    )
    before = tokens(server, key, "c-orb")
    amended = client.events.update(
        "oa-1", event_name="llm", properties={"tokens": 15}, timestamp=RECENT, customer_id="c-orb"
    )
    assert amended.amended == "oa-1"
    assert client.events.deprecate("oa-2").deprecated == "oa-2"
    assert client.events.deprecate("oa-2").deprecated == "oa-2", "a retry changes nothing"
    assert tokens(server, key, "c-orb") == before - 15
    with pytest.raises(orb.BadRequestError, match="no retained event"):
        client.events.deprecate("never-sent")
    with pytest.raises(orb.BadRequestError, match="cancelled"):
        client.events.update("oa-2", event_name="llm", properties={}, timestamp=RECENT, customer_id="c-orb")
    with server.client(key) as c:
        history = c.get("/v1/events/orb/oa-1").json()["history"]
    assert [h["change"] for h in history] == ["accepted", "amended"] and "Orb" in history[1]["reason"]


def test_orb_backfills_replace_and_revert(server: Server, key: str) -> None:
    client: Any = orb.Orb(api_key=key, base_url=f"{server.url}/compat/orb/v1", max_retries=0)
    start = RECENT + timedelta(minutes=30)
    sent = {"event_name": "llm", "customer_id": "c-orb-bf"}
    client.events.ingest(events=[sent | {"idempotency_key": "ob-1", "timestamp": start, "properties": {"tokens": 100}}])
    made = client.events.backfills.create(
        timeframe_start=start, timeframe_end=start + timedelta(minutes=10), customer_id="c-orb-bf"
    )
    assert made.status == "pending" and made.replace_existing_events
    staged = sent | {"idempotency_key": "ob-2", "timestamp": start + timedelta(minutes=1), "properties": {"tokens": 5}}
    assert client.events.ingest(events=[staged], backfill_id=made.id).validation_failed == []
    assert tokens(server, key, "c-orb-bf") == 100, "staged, not counted yet"
    assert client.events.backfills.close(made.id).status == "reflected"
    assert tokens(server, key, "c-orb-bf") == 5
    assert client.events.backfills.fetch(made.id).events_ingested == 1
    assert client.events.backfills.revert(made.id).status == "reverted"
    assert tokens(server, key, "c-orb-bf") == 100
    with pytest.raises(orb.BadRequestError, match="close_time"):
        client.events.backfills.create(timeframe_start=start, timeframe_end=start, close_time=start)


# ----------------------------------------------------------------------------------------------------------- Lago


def test_lago_sdk(server: Server, key: str) -> None:
    client = lago_python_client.Client(api_key=key, api_url=f"{server.url}/compat/lago/")
    seconds = int(RECENT.timestamp())
    one = Event(
        transaction_id="l-1",
        external_subscription_id="lago-sub-1",
        code="llm",
        timestamp=seconds,
        precise_total_amount_cents=None,
        properties={"tokens": 2},
    )
    made = client.events.create(one)
    assert made is not None and made.transaction_id == "l-1" and made.external_subscription_id == "lago-sub-1"
    assert client.events.create(one) is not None, "a duplicate is a success (Lago's PostgreSQL mode answers 422)"
    batch = [
        one.copy(update={"transaction_id": "l-2", "timestamp": f"{seconds}.250", "properties": {"tokens": 3}}),
        one.copy(update={"transaction_id": "l-3", "timestamp": None, "properties": {"tokens": 4}}),
    ]
    client.events.batch_create(BatchEvent(events=batch))
    client.events.batch_create(BatchEvent(events=batch))
    assert tokens(server, key, "c-lago") == 9, "the subscription's customer (l-3 counts at the receive time)"

    with pytest.raises(LagoApiError) as refused:
        client.events.batch_create(BatchEvent(events=[one.copy(update={"transaction_id": "l-4", "timestamp": "soon"})]))
    assert refused.value.status_code == 422
    assert "timestamp" in refused.value.response["error_details"]["0"], refused.value.response
    with pytest.raises(LagoApiError) as conflict:
        client.events.create(one.copy(update={"properties": {"tokens": 99}}))
    assert conflict.value.response["error_details"]["0"] == {"transaction_id": ["value_already_exist"]}
    with pytest.raises(LagoApiError) as too_many:
        client.events.batch_create(
            BatchEvent(events=[one.copy(update={"transaction_id": f"l-x{n}"}) for n in range(101)])
        )
    assert too_many.value.status_code == 422 and too_many.value.response["code"] == "too_many_events"
    with pytest.raises(LagoApiError) as unauthorized:
        lago_python_client.Client(api_key="nope", api_url=f"{server.url}/compat/lago/").events.create(one)
    assert unauthorized.value.status_code == 401
    assert tokens(server, key, "c-lago") == 9


# --------------------------------------------------------------------------------------------------------- Stripe


def stripe_client(server: Server, key: str) -> Any:
    """A StripeClient at the server (typed Any: the tests send what Stripe's parameter types would refuse too)."""
    base = f"{server.url}/compat/stripe"
    return stripe.StripeClient(key, base_addresses={"api": base, "meter_events": base}, max_network_retries=0)


def test_stripe_v1_meter_events(server: Server, key: str) -> None:
    client = stripe_client(server, key)
    params: dict[str, Any] = {
        "event_name": "llm",
        "payload": {"stripe_customer_id": "cus_stripe1", "tokens": "6"},
        "identifier": "s-1",
        "timestamp": int(RECENT.timestamp()),
    }
    made = client.v1.billing.meter_events.create(params)
    assert (made.identifier, made.event_name, made.payload["tokens"]) == ("s-1", "llm", "6")
    client.v1.billing.meter_events.create(params)
    keyless = {k: v for k, v in params.items() if k != "identifier"}
    client.v1.billing.meter_events.create(keyless)  # its Idempotency-Key is its identity
    assert tokens(server, key, "c-stripe") == 12

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create({**params, "identifier": "s-2", "payload": {"tokens": "1"}})
    assert refused.value.param == "payload[stripe_customer_id]"
    with pytest.raises(stripe.InvalidRequestError) as conflict:
        client.v1.billing.meter_events.create({**params, "payload": {**params["payload"], "tokens": "60"}})
    assert conflict.value.code == "conflict" and "s-1" in str(conflict.value)
    with pytest.raises(stripe.AuthenticationError):
        stripe_client(server, "sk_test_nope").v1.billing.meter_events.create(params)
    assert tokens(server, key, "c-stripe") == 12


def test_stripe_meter_event_adjustments_cancel(server: Server, key: str) -> None:
    client = stripe_client(server, key)
    params: dict[str, Any] = {
        "event_name": "llm",
        "payload": {"stripe_customer_id": "cus_stripe1", "tokens": "7"},
        "timestamp": int(RECENT.timestamp()),
    }
    for identifier in ("adj-1", "adj-2"):
        client.v1.billing.meter_events.create({**params, "identifier": identifier})
    before = tokens(server, key, "c-stripe")
    cancel: dict[str, Any] = {"event_name": "llm", "type": "cancel", "cancel": {"identifier": "adj-1"}}
    made = client.v1.billing.meter_event_adjustments.create(cancel)
    assert (made.status, made.cancel.identifier, made.type) == ("complete", "adj-1", "cancel")
    v2 = client.v2.billing.meter_event_adjustments.create({**cancel, "cancel": {"identifier": "adj-2"}})
    assert v2.status == "complete"
    assert tokens(server, key, "c-stripe") == before - 14
    with pytest.raises(stripe.InvalidRequestError, match="no retained event"):
        client.v1.billing.meter_event_adjustments.create({**cancel, "cancel": {"identifier": "never"}})
    with pytest.raises(stripe.InvalidRequestError) as wrong:
        client.v1.billing.meter_event_adjustments.create({**cancel, "type": "restate"})
    assert wrong.value.param == "type"


def test_stripe_v2_meter_event_stream(server: Server, key: str) -> None:
    session = stripe_client(server, key).v2.billing.meter_event_session.create()
    assert session.authentication_token.startswith("mst_") and session.expires_at > session.created
    streamer = stripe_client(server, session.authentication_token)
    events: list[Any] = [
        {"event_name": "llm", "payload": {"stripe_customer_id": "cus_stripe1", "tokens": "100"}, "identifier": "v2-1"}
        | {"timestamp": iso()},
        {"event_name": "llm", "payload": {"stripe_customer_id": "c-stripe", "tokens": "200"}, "identifier": "v2-2"},
    ]
    before = tokens(server, key, "c-stripe")
    streamer.v2.billing.meter_event_stream.create({"events": events})
    streamer.v2.billing.meter_event_stream.create({"events": events})
    assert tokens(server, key, "c-stripe") - before == 300

    with pytest.raises(stripe.InvalidRequestError):
        streamer.v2.billing.meter_event_stream.create(
            {"events": [{**events[0], "identifier": f"v2-x{n}"} for n in range(101)]}
        )
    with pytest.raises(stripe.AuthenticationError):
        stripe_client(server, key).v2.billing.meter_event_stream.create({"events": events})  # a key is no session
    assert tokens(server, key, "c-stripe") - before == 300


# ---------------------------------------------------------------------------------------------------- isolation


def test_an_alias_names_one_customer_and_a_tenant_maps_only_its_own(server: Server, key: str) -> None:
    before = tokens(server, key, "c-orb")
    with server.client(key) as c:
        taken = c.post(
            "/v1/customers", json={"id": "c-other", "name": "o", "currency": "USD", "aliases": ["orb-external-1"]}
        )
        assert taken.status_code == 409 and "orb-external-1" in taken.json()["message"]
    other = server.tenant_key("globex", ["ingest", "read", "admin"])
    with server.client(other) as c:
        meter = {"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
        assert c.post("/v1/meters", json=meter).status_code == 201
    client: Any = orb.Orb(api_key=other, base_url=f"{server.url}/compat/orb/v1", max_retries=0)
    event = {"event_name": "llm", "idempotency_key": "o-1", "external_customer_id": "orb-external-1"}
    client.events.ingest(events=[event | {"timestamp": RECENT, "properties": {"tokens": 1000}}])
    assert tokens(server, key, "c-orb") == before, "another tenant's alias and event ids are its own"
    assert tokens(server, other, "orb-external-1") == 1000


# ------------------------------------------------------------------------------------- in process: names, sessions


def test_a_customers_names_are_indexed_with_it_and_each_names_one_customer(tmp_path: Path) -> None:
    catalog = BillingCatalog(tmp_path / "catalog")
    ada = Customer(id="ada", name="Ada", currency="EUR", aliases=["orb-ada"], stripe_customer="cus_ada")
    catalog.put_customer("t", ada)
    assert [catalog.customer_named("t", n) for n in ("ada", "orb-ada", "cus_ada", "nobody")] == ["ada"] * 3 + [None]
    assert catalog.customer_named("other-tenant", "orb-ada") is None
    with pytest.raises(AlreadyExists, match="orb-ada"):
        catalog.put_customer("t", Customer(id="bob", name="Bob", currency="EUR", aliases=["orb-ada"]))
    with pytest.raises(AlreadyExists, match="ada"):
        catalog.put_customer("t", Customer(id="bob", name="Bob", currency="EUR", aliases=["ada"]))
    with pytest.raises(AlreadyExists, match="cus_ada"):
        catalog.put_customer("t", Customer(id="cus_ada", name="Bob", currency="EUR"))
    # Renamed: the old alias names nobody, and another customer may take it; deleted: its names go with it.
    catalog.put_customer("t", msgspec.structs.replace(ada, aliases=["orb-ada-2"]))
    assert (catalog.customer_named("t", "orb-ada"), catalog.customer_named("t", "orb-ada-2")) == (None, "ada")
    catalog.put_customer("t", Customer(id="bob", name="Bob", currency="EUR", aliases=["orb-ada"]))
    catalog.delete_customer("t", "ada")
    assert [catalog.customer_named("t", n) for n in ("ada", "orb-ada-2", "cus_ada", "orb-ada")] == [None] * 3 + ["bob"]
    catalog.close()


def test_a_session_token_stands_for_its_key_until_it_expires_or_the_key_is_revoked(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys")
    keys.create_tenant("t")
    _, key = keys.create_key("t", ["ingest"])
    token = keys.session_token(key, expires=1_000)
    assert keys.session_key(token, now=999) == key
    assert keys.session_key(token, now=1_000) == "expired"
    forged = [token.replace(".1000.", ".2000."), token[:-1] + ("0" if token[-1] != "0" else "1"), "mst_x", key.id]
    assert [keys.session_key(t, now=999) for t in forged] == [None] * 4
    _, other = keys.create_key("t", ["ingest"])
    assert keys.session_key(token.replace(key.id, other.id), now=999) is None, "a token is its own key's"
    keys.revoke(key.id, tenant="t")
    assert keys.session_key(token, now=999) is None
    keys.close()


def test_a_catalog_written_before_names_were_indexed_is_indexed_when_opened(tmp_path: Path) -> None:
    catalog = BillingCatalog(tmp_path / "catalog")
    catalog.put_customer("t", Customer(id="ada", name="Ada", currency="EUR", stripe_customer="cus_ada"))
    # As an earlier version left it: the customer, and neither its names nor the mark that they were indexed.
    for key in (b"customer_name/t/cus_ada", b"meta/customer_names"):
        catalog._db.delete(key)
    assert catalog.customer_named("t", "cus_ada") is None
    catalog.close()
    catalog = BillingCatalog(tmp_path / "catalog")
    assert catalog.customer_named("t", "cus_ada") == "ada"
    catalog.close()
