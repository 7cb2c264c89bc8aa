"""No 5xx for bad input: requests generated from the OpenAPI document, for every route, against the real server.

schemathesis builds requests from `openapi()` (the explicit examples, then the boundary and negative values of every
parameter and body field, then random ones, valid and invalid) and sends them to `meter serve` with a tenant key of
each scope, a key with every scope, the operator key, a well-formed unknown key and no key. Every answer must be:
not a 5xx; one of the statuses the document lists for the operation, with the body schema it lists for that status
(and its content type); for a 4xx a JSON body with `code` and `message`. A second test follows the document's links
(create, then get, then delete) with a state machine, and a third sets every field of every documented body example
to each of a list of hostile values (NaN, 1E+999999, 9999-12, a naive time, ...), then checks that the tenant's
invoice run still answers: a value that is stored must not break billing later.

Bounded for `make test` (about two minutes on two cores) and derandomized so that CI is deterministic. To run longer:

    METER_FUZZ_EXAMPLES=200 METER_FUZZ_STEPS=50 pytest tests/test_bad_input.py

`METER_FUZZ_KEEP_GOING=1` records every failing answer instead of stopping at the first one of an operation (figures,
including failures by check, are printed as one JSON line at the end; `-s` shows it, `METER_FUZZ_REPORT=FILE` keeps
it), and `METER_FUZZ_DATA=1` also checks that schema-valid requests are accepted and schema-invalid ones refused.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from http_server import Server
from meter.catalog.keys import new_key
from meter.server.openapi import EXAMPLES, openapi
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup

MAX_EXAMPLES = int(os.environ.get("METER_FUZZ_EXAMPLES", "5"))
STATEFUL_EXAMPLES = int(os.environ.get("METER_FUZZ_STEPS", "10"))
KEEP_GOING = os.environ.get("METER_FUZZ_KEEP_GOING") == "1"
LONG = "METER_FUZZ_EXAMPLES" in os.environ

CONFIG = schemathesis.Config.from_dict(
    {
        # The key is the test's to choose (`Fuzzed.key_for`), not the generator's.
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            "unique-inputs": True,
            "with-security-parameters": False,
        },
        # Whether the server accepts exactly the requests the schemas describe is left to METER_FUZZ_DATA=1: meter
        # checks more than a schema can say (a slug's syntax, ISO 4217 codes, that a customer exists, a YYYY-MM period)
        # and ignores query parameters it does not know.
        "checks": {
            name: {"enabled": os.environ.get("METER_FUZZ_DATA") == "1"}
            for name in ("negative_data_rejection", "positive_data_acceptance")
        },
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "request-timeout": 30,
    }
)
schema = schemathesis.openapi.from_dict(openapi(), config=CONFIG)

TENANT = "fuzz"
SCOPES = ("ingest", "read", "export", "admin")
#: The keys a request is sent with; most requests get the key their route needs (see `key_for`).
KINDS = ("operator", *SCOPES, "all", "unknown", "none")


class Figures:
    """What the run did, printed as one JSON line at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls = 0
        self.operations: set[str] = set()
        self.statuses: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.failing: dict[str, str] = {}

    def record(self, case: schemathesis.Case, kind: str, status: int) -> None:
        self.calls += 1
        self.operations.add(case.operation.label)
        self.statuses[f"{status // 100}xx" if status < 400 else str(status)] += 1
        self.keys[kind] += 1

    def failed(self, case: schemathesis.Case, group: FailureGroup) -> None:
        for failure in group.exceptions:
            self.failures[type(failure).__name__] += 1
            self.failing.setdefault(f"{case.operation.label}: {failure.title}", str(failure.message)[:300])

    def as_json(self) -> str:
        return json.dumps(
            {
                "operations": len(self.operations),
                "requests": self.calls,
                "max_examples": MAX_EXAMPLES,
                "statuses": dict(sorted(self.statuses.items())),
                "keys": dict(sorted(self.keys.items())),
                "failures_by_check": dict(self.failures),
                "failing": self.failing,
                "seconds": round(time.monotonic() - self.started, 1),
            }
        )


FIGURES = Figures()


class Fuzzed:
    """The server under test and its keys."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.keys: dict[str, str | None] = {"operator": server.admin_key, "unknown": new_key(), "none": None}
        for scope in SCOPES:
            self.keys[scope] = server.tenant_key(TENANT, [scope])
        self.keys["all"] = server.tenant_key(TENANT, list(SCOPES))

    def seed(self) -> None:
        """Send the documented examples, in order, so that their ids exist for the generated requests to find.

        Those are the meter `tokens`, customer `cust-1`, plan `pro`, subscription `sub-1` and November's invoice.
        """
        with httpx.Client(
            base_url=self.server.url, timeout=30, headers={"Authorization": f"Bearer {self.keys['all']}"}
        ) as client:
            for path, body in [
                ("/v1/meters", "MeterSpec"),
                ("/v1/customers", "Customer"),
                ("/v1/products", "Product"),
                ("/v1/plans", "PlanBody"),
                ("/v1/plans/pro/versions", "PlanVersionBody"),
                ("/v1/subscriptions", "Subscription"),
                ("/v1/invoices/run", "InvoiceRunBody"),
            ]:
                r = client.post(path, json=EXAMPLES[body])
                assert r.status_code in (200, 201), (path, r.status_code, r.text)
            r = client.post("/v1/events", json=[EXAMPLES["CloudEvent"]])
            assert r.status_code == 200, r.text

    def key_for(self, case: schemathesis.Case) -> tuple[str, str | None]:
        """Three requests in four get the key their route needs (so that they reach the handler), the fourth any.

        Chosen from the request itself, so that a failure replays with the same key.
        """
        body = None if isinstance(case.body, NotSet) else case.body
        digest = zlib.crc32(repr((case.operation.label, case.path_parameters, case.query, case.headers, body)).encode())
        path = case.operation.path
        if digest % 4:
            kind = "operator" if path.startswith("/v1/admin/") or path == "/metrics" else "all"
        else:
            kind = KINDS[(digest >> 2) % len(KINDS)]
        return kind, self.keys[kind]

    def headers(self, case: schemathesis.Case, key: str | None) -> dict[str, str]:
        # The key is ours to choose: drop any Authorization the generator made up.
        if case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    # The fuzzer registers webhook endpoints at whatever public URLs it makes up: their deliveries never start (the
    # worker looks for new events once a day), so a machine with a network posts nothing anywhere.
    server = Server(tmp_path_factory.mktemp("fuzz") / "data", env={"METER_WEBHOOK_POLL": "86400"})
    try:
        target = Fuzzed(server)
        target.seed()
        yield target
    finally:
        server.stop()
        report = FIGURES.as_json()
        print(f"\nbad-input run: {report}", file=sys.stderr)
        if out := os.environ.get("METER_FUZZ_REPORT"):
            Path(out).write_text(report + "\n")


def error_body_has_code_and_message(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx and 5xx answer is JSON with a string `code` and a string `message`."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {response.status_code} answer is not JSON: {response.content[:200]!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str), (
        f"a {response.status_code} answer lacks a string `code` and `message`: {body!r}"[:500]
    )


@schema.parametrize()
@hypothesis.settings(deadline=None)
def test_no_5xx_and_every_answer_as_documented(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    kind, key = fuzzed.key_for(case)
    response = case.call(base_url=fuzzed.server.url, headers=fuzzed.headers(case, key))
    FIGURES.record(case, kind, response.status_code)
    try:
        case.validate_response(
            response,
            additional_checks=[error_body_has_code_and_message],
            headers={"Authorization": f"Bearer {key}"} if key else None,
            transport_kwargs={"base_url": fuzzed.server.url},
        )
    except FailureGroup as e:
        FIGURES.failed(case, e)
        if not KEEP_GOING:
            raise


def test_create_get_delete(fuzzed: Fuzzed) -> None:
    """The document's links as a state machine: what a create answers is read, changed and deleted by id."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            path = case.operation.path
            key = fuzzed.keys["operator" if path.startswith("/v1/admin/") or path == "/metrics" else "all"]
            return {"base_url": fuzzed.server.url, "headers": {"Authorization": f"Bearer {key}"}}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            FIGURES.record(case, "stateful", response.status_code)
            try:
                super().validate_response(response, case, [error_body_has_code_and_message], **kwargs)
            except FailureGroup as e:
                FIGURES.failed(case, e)
                if not KEEP_GOING:
                    raise

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            stateful_step_count=6,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
    )


#: A value each body field is set to, one field at a time (`test_hostile_values_in_every_field_of_every_body`); the
#: most telling first: `make test` sends the first `SWEEP_QUICK`, a longer run (METER_FUZZ_EXAMPLES set) all of them
#: and checks the upcoming invoice too.
SWEEP: list[Any] = [
    "NaN",
    "sNaN",
    "1E+999999",
    "0.0000000000000000000000000000001",
    "9999-12",
    "2026-11-01T00:00:00",
    "XYZ",
    "",
    None,
    [],
    "-1",
    "x" * 300,
    "\u0000",
    "-Infinity",
    "99999999999999999999999999999999999999.5",
    "0",
    "0000-00",
    "9999-12-31T23:59:59-01:00",
    "Europe/Nowhere",
    "$..x",
    "nothing-here",
    1.5,
    {},
]
SWEEP_QUICK = len(SWEEP) if LONG else 5
#: Each documented body, where it goes, and what must exist first (ids the examples name).
BODIES = [
    ("/v1/meters", "MeterSpec"),
    ("/v1/customers", "Customer"),
    ("/v1/products", "Product"),
    ("/v1/plans", "PlanBody"),
    ("/v1/plans/pro/versions", "PlanVersionBody"),
    ("/v1/subscriptions", "Subscription"),
    ("/v1/subscriptions/sub-1/migrate", "MigrationBody"),
    ("/v1/invoices/{invoice}/credit-notes", "CreditNoteBody"),
    ("/v1/invoices/run", "InvoiceRunBody"),
]


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, (*path, i))
    else:
        yield path


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)  # type: ignore[index]
    return copy


def test_hostile_values_in_every_field_of_every_body(fuzzed: Fuzzed) -> None:
    """Every field of every documented body example set to each `SWEEP` value in turn: never a 5xx.

    When the write is accepted, the tenant's invoice run and upcoming invoice must still answer (a stored value must
    not break billing later). A tenant whose billing broke is reported and replaced by a fresh one.
    """
    failures: list[str] = []
    tenants = iter(range(1000))

    invoice = ""

    def fresh() -> httpx.Client:
        nonlocal invoice
        client = fuzzed.server.client(fuzzed.server.tenant_key(f"sweep-{next(tenants)}", list(SCOPES)))
        for path, body in BODIES[:-3]:
            assert client.post(path, json=EXAMPLES[body]).status_code in (200, 201)
        r = client.post("/v1/invoices/run", json={"period": "2026-10", "finalize": True})
        assert r.status_code == 200 and r.json()["invoices"], r.text
        invoice = r.json()["invoices"][0]["id"]  # finalized: what credit notes need
        return client

    def answered(r: httpx.Response, what: str) -> bool:
        FIGURES.statuses[str(r.status_code) if r.status_code >= 400 else f"{r.status_code // 100}xx"] += 1
        FIGURES.calls += 1
        if r.status_code >= 500 or (r.status_code >= 400 and not {"code", "message"} <= set(r.json())):
            failures.append(f"{what}: {r.status_code} {r.text[:200]}")
            return False
        return True

    def new_version(client: httpx.Client, body: Any, what: str) -> bool:
        """Add a version to a plan of its own, and subscribe to it when it is accepted, so that billing rates it.

        (The sweep's versions would not take effect after the example's, on the example's plan.)
        """
        plan = f"plan-{next(plans)}"
        assert client.post("/v1/plans", json={"id": plan, "name": plan}).status_code == 201
        r = client.post(f"/v1/plans/{plan}/versions", json=body)
        if not answered(r, what) or r.status_code >= 300:
            return r.status_code < 500
        client.delete("/v1/subscriptions/sub-sweep")
        sub = {**EXAMPLES["Subscription"], "id": "sub-sweep", "plan": plan, "discounts": [], "credits": []}
        return answered(client.post("/v1/subscriptions", json=sub), f"subscribing to {what}")

    plans = iter(range(100_000))
    client = fresh()
    for path, name in BODIES:
        example = EXAMPLES[name]
        for leaf in leaves(example):
            for value in SWEEP[:SWEEP_QUICK]:
                body = replaced(example, leaf, value)
                what = f"POST {path} {'.'.join(map(str, leaf))}={value!r}"[:160]
                if name == "PlanVersionBody":
                    ok = new_version(client, body, what)
                    r = httpx.Response(201 if ok else 500)
                else:
                    r = client.post(path.format(invoice=invoice), json=body)
                    ok = answered(r, what)
                if not ok:
                    client = fresh()  # a 5xx may have been applied all the same: go on with a clean tenant
                elif r.status_code < 300 and name not in ("InvoiceRunBody", "MeterSpec", "Product", "PlanBody"):
                    billing_ok = answered(
                        client.post("/v1/invoices/run", json={"period": "2026-11"}), f"invoice run after {what}"
                    )
                    if LONG:
                        billing_ok &= answered(
                            client.get("/v1/customers/cust-1/upcoming-invoice"), f"upcoming invoice after {what}"
                        )
                    if not billing_ok:
                        client = fresh()
                    elif name == "PlanVersionBody":
                        client.delete("/v1/subscriptions/sub-sweep")
                    elif "credit" not in path:  # put the example back
                        client.post(
                            path if "migrate" not in path else "/v1/subscriptions",
                            json=example if "migrate" not in path else EXAMPLES["Subscription"],
                        )
    if failures:
        FIGURES.failures["HostileValueSweep"] += len(failures)
    FIGURES.failing.update({f: "" for f in failures[:50]})
    assert not failures, f"{len(failures)} answers were a 5xx or lacked code and message:\n" + "\n".join(failures[:40])


def test_header_bytes_that_are_not_utf8_on_every_route(fuzzed: Fuzzed) -> None:
    """A header byte that is not UTF-8, in any header or in the key, is a 4xx on every route.

    HTTP header values are bytes; the generator only sends ASCII ones, so these go by hand over a socket.
    """
    failures = []
    document = openapi()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            params = {p["name"]: p.get("example", "x") for p in op.get("parameters", []) if p["in"] == "path"}
            target = path.format(**params).encode()
            key = (fuzzed.keys["operator" if path.startswith("/v1/admin/") else "all"] or "").encode()
            for headers in (b"X-Junk: \xff\xfe\r\nAuthorization: Bearer " + key, b"Authorization: Bearer \xff" + key):
                request = (
                    method.upper().encode()
                    + b" "
                    + target
                    + b" HTTP/1.1\r\nHost: meter\r\n"
                    + headers
                    + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                )
                with socket.create_connection(("127.0.0.1", fuzzed.server.port), timeout=30) as sock:
                    sock.sendall(request)
                    answer = b""
                    while chunk := sock.recv(65536):
                        answer += chunk
                head, _, body = answer.partition(b"\r\n\r\n")
                status = int(head.split(b" ")[1])
                FIGURES.calls += 1
                if status >= 500 or (status >= 400 and b'"code"' not in body):
                    failures.append(f"{method.upper()} {path} {headers[:24]!r}...: {status} {body[:100]!r}")
    assert not failures, f"{len(failures)} answers:\n" + "\n".join(failures)


# Focused regressions for what the run found (the property test above finds them again if they come back).


@pytest.fixture(scope="module")
def regress(fuzzed: Fuzzed) -> httpx.Client:
    """A tenant of its own with the documented catalog, apart from what the generated requests did to `fuzz`."""
    client = fuzzed.server.client(fuzzed.server.tenant_key("regress", list(SCOPES)))
    for path, body in [
        ("/v1/meters", "MeterSpec"),
        ("/v1/customers", "Customer"),
        ("/v1/plans", "PlanBody"),
        ("/v1/plans/pro/versions", "PlanVersionBody"),
        ("/v1/subscriptions", "Subscription"),
    ]:
        assert client.post(path, json=EXAMPLES[body]).status_code in (200, 201)
    return client


@pytest.mark.parametrize(
    "change",
    [
        {"discounts": [{"id": "d", "start": "2026-01-01T00:00:00Z", "end": "2026-12-01T00:00:00", "percent": "10"}]},
        {"start": "0001-01-01T00:00:00+01:00"},
        {"start": "9999-12-31T00:00:00Z"},
        {"end": "9999-12-31T23:59:59-01:00"},
        {"credits": [{"id": "c", "amount": "5", "start": "2026-01-01T00:00:00", "end": "2027-01-01T00:00:00Z"}]},
    ],
)
def test_a_time_without_offset_or_at_the_ends_of_the_calendar_is_refused(
    regress: httpx.Client, change: dict[str, Any]
) -> None:
    """Such a subscription was stored (200), then every invoice run and upcoming invoice of the tenant was a 500.

    (Refused by the catalog's time type since the merge of h/catalog: times carry an offset and fall in [1970, 9000).)
    """
    r = regress.post("/v1/subscriptions", json={**EXAMPLES["Subscription"], "id": "sub-bad", **change})
    assert r.status_code == 400, r.text
    assert {"code", "message"} <= set(r.json())
    assert regress.get("/v1/subscriptions/sub-bad").status_code == 404
    assert regress.post("/v1/invoices/run", json={"period": "2026-11"}).status_code == 200
    assert regress.get("/v1/customers/cust-1/upcoming-invoice").status_code == 200


def test_plan_versions_and_migrations_refuse_such_times_too(regress: httpx.Client) -> None:
    r = regress.post("/v1/plans/pro/versions", json={"effective_from": "9999-12-31T23:59:59-01:00", "prices": []})
    assert r.status_code == 400 and "effective_from" in r.json()["message"], r.text
    r = regress.post("/v1/subscriptions/sub-1/migrate", json={"version": 2, "at": "2026-12-01T00:00:00"})
    assert r.status_code == 400 and "at" in r.json()["message"], r.text


def test_a_405_says_which_methods_the_path_has(fuzzed: Fuzzed) -> None:
    with httpx.Client(base_url=fuzzed.server.url) as client:
        r = client.request("PATCH", "/v1/meters/tokens")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET", r.headers
        r = client.request("PUT", "/v1/invoices/thresholds")  # a literal path, though it fits /v1/invoices/{id}
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = client.request("TRACE", "/healthz")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        assert r.json()["code"] == "method_not_allowed"


@pytest.mark.skipif(not KEEP_GOING, reason="failures are raised where they happen unless METER_FUZZ_KEEP_GOING=1")
def test_the_run_that_kept_going_found_nothing(fuzzed: Fuzzed) -> None:
    """Last in the module: with METER_FUZZ_KEEP_GOING=1 the failures recorded along the way fail the run here."""
    assert not sum(FIGURES.failures.values()), json.dumps(FIGURES.failing, indent=1)[:20000]
