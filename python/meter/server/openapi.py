"""The OpenAPI document, generated from the msgspec schemas the routes use, so the spec and the code cannot drift."""

from __future__ import annotations

from typing import Any

import msgspec

from meter.catalog.billing import (Customer, MigrationBody, Plan, PlanBody, PlanVersion, PlanVersionBody, Product,
                                   Subscription)
from meter.pricing.invoices import CreditNote, CreditNoteBody, Invoice, InvoiceRunBody
from meter.schemas import CreatedMeter, IngestResult, Meter, MeterSpec, SkippedEvents

__all__ = ["ErrorBody", "openapi"]


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    issues: list[dict[str, Any]] | None = None


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _op(summary: str, scope: str | None, ok: tuple[int, str] | None = None, body: str | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"default": {"description": "error", **_ref("ErrorBody")}}
    if ok:
        responses[str(ok[0])] = {"description": "ok", **(_ref(ok[1]) if ok[1] else {})}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs the `{scope}` scope."
    if body:
        op["requestBody"] = {"required": True, **_ref(body)}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, required: bool = False, repeat: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}} if repeat else {"type": "string"}
    return {"name": name, "in": "query", "required": required, "schema": schema, "explode": True}


SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
# The billing catalog's collections and what one of their items is.
CATALOG: dict[str, type[msgspec.Struct]] = {"customers": Customer, "products": Product, "plans": Plan,
                                            "subscriptions": Subscription}


def _catalog_paths(kind: str, item: type[msgspec.Struct]) -> dict[str, Any]:
    name = item.__name__
    body, created = ("PlanBody", 201) if kind == "plans" else (name, 200)
    return {
        f"/v1/{kind}": {"post": _op(f"Create or replace a {name.lower()}", "admin", (created, name), body),
                        "get": _op(f"List {kind}", "read", (200, ""))},
        f"/v1/{kind}/{{id}}": {"get": _op(f"Get a {name.lower()}", "read", (200, name), params=[ID]),
                               "delete": _op(f"Delete a {name.lower()} nothing refers to (else 409 in_use)", "admin",
                                             (200, ""), params=[ID])},
    }


def openapi() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [IngestResult, MeterSpec, Meter, CreatedMeter, SkippedEvents,
         ErrorBody, *CATALOG.values(), PlanBody, PlanVersionBody,
         PlanVersion, MigrationBody, Invoice, CreditNote, InvoiceRunBody, CreditNoteBody], ref_template="#/components/schemas/{name}"
    )
    events_body = {"required": True, "content": {
        t: {"schema": {"type": "array", "items": {"type": "object"}} if "batch" in t or t == "application/json"
            else {"type": "object"}}
        for t in ("application/cloudevents-batch+json", "application/json", "application/cloudevents+json")}}
    ingest = _op("Ingest a batch of CloudEvents", "ingest", (200, "IngestResult"), params=[_q("atomic")])
    ingest["requestBody"] = events_body
    usage_params = [SLUG, _q("from", True), _q("to", True), _q("window_size"), _q("subject", repeat=True),
                    _q("group_by", repeat=True), _q("tz")]
    return {
        "openapi": "3.1.0",
        "info": {"title": "meter", "version": "1"},
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/events": {"post": ingest},
            "/v1/meters": {"post": _op("Create a meter (backfilled)", "admin", (201, "CreatedMeter"), "MeterSpec"),
                           "get": _op("List meters", "read", (200, ""))},
            "/v1/meters/{slug}": {"get": _op("Get a meter", "read", (200, "Meter"), params=[SLUG]),
                                  "delete": _op("Delete a meter and its usage", "admin", (200, ""), params=[SLUG])},
            "/v1/meters/{slug}/usage": {"get": _op("Usage over [from, to) (JSON, CSV or Arrow IPC by Accept)",
                                                   "read", (200, ""), params=usage_params)},
            "/v1/meters/{slug}/skipped": {"get": _op(
                "Events of [from, to) the meter could not read, with why (pages: limit 1-1000, then after=next)",
                "read", (200, "SkippedEvents"),
                params=[SLUG, _q("from", True), _q("to", True), _q("limit"), _q("after")])},
            **{path: ops for kind, body in CATALOG.items() for path, ops in _catalog_paths(kind, body).items()},
            "/v1/plans/{id}/versions": {"post": _op("Add a plan version (editing a plan)", "admin",
                                                    (201, "PlanVersion"), "PlanVersionBody", [ID])},
            "/v1/invoices/run": {"post": _op("Compute (or recompute) the drafts of the cycles starting in a month",
                                             "admin", (200, ""), "InvoiceRunBody")},
            "/v1/invoices/thresholds": {"post": _op("Issue the threshold invoices due now", "admin", (200, ""))},
            "/v1/invoices": {"get": _op("List invoices (filters: status, customer, subscription)", "read", (200, ""),
                                        params=[_q("status"), _q("customer"), _q("subscription")])},
            "/v1/invoices/{id}": {"get": _op("Get an invoice with its explained lines", "read", (200, "Invoice"),
                                             params=[ID])},
            "/v1/invoices/{id}/finalize": {"post": _op("Finalize (number) a draft", "admin", (200, "Invoice"),
                                                       params=[ID])},
            "/v1/invoices/{id}/void": {"post": _op("Void a finalized invoice", "admin", (200, "Invoice"), params=[ID])},
            "/v1/invoices/{id}/credit-notes": {"post": _op("Credit part of a finalized invoice", "admin",
                                                           (201, "CreditNote"), "CreditNoteBody", [ID])},
            "/v1/credit-notes": {"get": _op("List credit notes", "read", (200, ""))},
            "/v1/customers/{id}/upcoming-invoice": {"get": _op("Preview the customer's next invoices", "read",
                                                               (200, ""), params=[ID])},
            "/v1/subscriptions/{id}/migrate": {"post": _op("Move a subscription to another plan version from `at`",
                                                           "admin", (200, "Subscription"), "MigrationBody", [ID])},
            "/healthz": {"get": _op("Alive", None, (200, ""))},
            "/readyz": {"get": _op("Store healthy", None, (200, ""))},
            "/metrics": {"get": _op("Prometheus metrics", None, (200, ""))},
        },
    }
