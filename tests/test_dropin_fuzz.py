"""The drop-in routes never answer bad input with a 5xx, and every error comes in its vendor's shape.

Hypothesis sends each vendor's route bodies that are near its contract (right field names, values of any JSON type,
fields missing or extra, batches empty or too large) and bodies that are not JSON at all, in process through the
real route, key check and error paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from in_process import InProcess, started

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
TIMES = st.one_of(st.just("2026-11-30T10:00:00Z"), st.just("2026-11-30T10:00:00+00:00"), st.just("1796152693.25"), JSON)


def near(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with some of ``fields`` (each a value of its kind, or any JSON), and maybe an unknown one."""
    return st.fixed_dictionaries({}, optional={k: v | JSON for k, v in fields.items()} | {"zz": JSON})


IDS = st.text(min_size=0, max_size=6)
METRONOME = near({"transaction_id": IDS, "customer_id": IDS, "event_type": IDS, "timestamp": TIMES, "properties": JSON})
ORB = near(
    {"event_name": IDS, "idempotency_key": IDS, "timestamp": TIMES, "properties": JSON, "customer_id": IDS}
    | {"external_customer_id": IDS}
)
LAGO = near(
    {"transaction_id": IDS, "external_subscription_id": IDS, "code": IDS, "timestamp": TIMES, "properties": JSON}
)
STRIPE = near({"event_name": IDS, "identifier": IDS, "timestamp": TIMES, "payload": st.dictionaries(IDS, IDS)})
CLOUD = near({"specversion": st.just("1.0"), "id": IDS, "source": IDS, "type": IDS, "subject": IDS, "time": TIMES})


def many(item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(item, max_size=4) | st.lists(item, min_size=101, max_size=102)


def openmeter_shape(body: Any) -> bool:
    return isinstance(body, dict) and {"type", "title", "status", "detail"} <= set(body)


def metronome_shape(body: Any) -> bool:
    return isinstance(body, dict) and "message" in body


def orb_shape(body: Any) -> bool:
    return isinstance(body, dict) and str(body.get("type", "")).startswith("https://docs.withorb.com/")


def lago_shape(body: Any) -> bool:
    return isinstance(body, dict) and {"status", "error"} <= set(body)


def stripe_shape(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]


ROUTES: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], bool], str]] = [
    ("/compat/openmeter/api/v1/events", many(CLOUD) | CLOUD, openmeter_shape, "application/cloudevents-batch+json"),
    ("/compat/metronome/v1/ingest", many(METRONOME) | JSON, metronome_shape, "application/json"),
    ("/compat/orb/v1/ingest", st.fixed_dictionaries({"events": many(ORB)}) | JSON, orb_shape, "application/json"),
    ("/compat/lago/api/v1/events", st.fixed_dictionaries({"event": LAGO}) | JSON, lago_shape, "application/json"),
    (
        "/compat/lago/api/v1/events/batch",
        st.fixed_dictionaries({"events": many(LAGO)}) | JSON,
        lago_shape,
        "application/json",
    ),
    (
        "/compat/stripe/v2/billing/meter_event_stream",
        st.fixed_dictionaries({"events": many(STRIPE)}),
        stripe_shape,
        "application/json",
    ),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    with started(tmp_path_factory.mktemp("fuzz")) as app:
        yield app


@pytest.mark.parametrize(("path", "bodies", "shaped", "media"), ROUTES, ids=[r[0] for r in ROUTES])
def test_no_body_makes_a_5xx_and_every_error_is_the_vendors(
    app: InProcess, path: str, bodies: st.SearchStrategy[Any], shaped: Callable[[Any], bool], media: str
) -> None:
    headers = {"content-type": media}
    if path.endswith("meter_event_stream"):  # authenticated by a session's token, not the key
        session = app.post("/compat/stripe/v2/billing/meter_event_session", content=b"", headers=headers).json()
        headers["authorization"] = f"Bearer {session['authentication_token']}"

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies)
    def check(body: Any) -> None:
        answer = app.post(path, json=body, headers=headers)
        assert answer.status_code < 500, (body, answer.text)
        if answer.status_code >= 400:
            assert shaped(answer.json()), (body, answer.text)

    check()
    for raw in (b"", b"{", b"\xff\xfe", b"[" * 2000):
        answer = app.post(path, content=raw, headers=headers)
        assert 400 <= answer.status_code < 500 and shaped(answer.json()), (raw[:10], answer.text)


@given(
    form=st.dictionaries(
        st.sampled_from(
            ["event_name", "identifier", "timestamp", "payload[stripe_customer_id]", "payload[tokens]", "zz"]
        ),
        st.text(max_size=12),
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_stripe_v1_forms_never_make_a_5xx(app: InProcess, form: dict[str, str]) -> None:
    answer = app.post("/compat/stripe/v1/billing/meter_events", data=form)
    assert answer.status_code < 500, (form, answer.text)
    if answer.status_code >= 400:
        assert stripe_shape(answer.json()), (form, answer.text)


def test_a_wrong_media_type_is_refused_in_the_vendors_shape(app: InProcess) -> None:
    answer = app.post("/compat/lago/api/v1/events/batch", content=b"events=1", headers={"content-type": "text/plain"})
    assert answer.status_code == 415 and lago_shape(answer.json()), answer.text
