"""The OpenAPI document, generated from the msgspec schemas the routes use, so the spec and the code cannot drift."""

from __future__ import annotations

from typing import Any

import msgspec

from meter.catalog.billing import (
    Customer,
    MigrationBody,
    Plan,
    PlanBody,
    PlanVersion,
    PlanVersionBody,
    Product,
    Subscription,
)
from meter.catalog.keys import KeyBody, TenantBody, TenantKeyBody
from meter.pricing.invoices import CreditNote, CreditNoteBody, Invoice, InvoiceRun, InvoiceRunBody
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
    """One operation. `scope`: the scope a tenant key needs, "operator" (an operator key only), or None (public)."""
    responses: dict[str, Any] = {"default": {"description": "error", **_ref("ErrorBody")}}
    if ok:
        responses[str(ok[0])] = {"description": "ok", **(_ref(ok[1]) if ok[1] else {})}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if scope == "operator":
        op["security"] = [{"bearer": []}]
        op["description"] = "Needs an operator key (tenant keys get 403 `operator_only`)."
    elif scope:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs a tenant key with the `{scope}` scope (operator keys get 403 `tenant_only`)."
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
        [IngestResult, MeterSpec, Meter, CreatedMeter, SkippedEvents, ErrorBody, *CATALOG.values(), PlanBody, PlanVersionBody,
         PlanVersion, MigrationBody, Invoice, CreditNote, InvoiceRunBody, CreditNoteBody, InvoiceRun, TenantBody,
         KeyBody, TenantKeyBody], ref_template="#/components/schemas/{name}"
    )
    events_body = {"required": True, "content": {
        t: {"schema": {"type": "array", "items": {"type": "object"}} if "batch" in t or t == "application/json"
            else {"type": "object"}}
        for t in ("application/cloudevents-batch+json", "application/json", "application/cloudevents+json")}}
    atomic = {**_q("atomic"), "description": "true/false, 1/0 or yes/no (any case); anything else is a 400"}
    ingest = _op("Ingest a batch of CloudEvents", "ingest", (200, "IngestResult"), params=[atomic])
    ingest["responses"]["400"] = {"description": "nothing accepted (`no_events_accepted`, with `issues`), or a bad "
                                                 "request", **_ref("ErrorBody")}
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
            "/v1/invoices/run": {"post": _op("Compute (or recompute) the drafts of the cycles starting in a month: "
                                             "their fees in advance and the previous cycles' usage in arrears; "
                                             "subscriptions that cannot be invoiced are listed in `errors`",
                                             "admin", (200, "InvoiceRun"), "InvoiceRunBody")},
            "/v1/invoices/thresholds": {"post": _op("Issue the threshold invoices due now", "admin",
                                                    (200, "InvoiceRun"))},
            "/v1/invoices": {"get": _op("List invoices (filters: status, customer, subscription; period: the month "
                                        "the cycles start in; usage_period: the month whose usage they bill)",
                                        "read", (200, ""), params=[_q("status"), _q("customer"), _q("subscription"),
                                                                    _q("period"), _q("usage_period")])},
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
            "/v1/keys": {"post": _op("Create a key of the caller's tenant (shown once)", "admin", (201, ""),
                                     "TenantKeyBody"),
                         "get": _op("List the caller's tenant's keys", "admin", (200, ""))},
            "/v1/keys/{id}": {"delete": _op("Revoke a key of the caller's tenant (another's is 404)", "admin",
                                            (200, ""), params=[ID])},
            "/v1/admin/tenants": {"post": _op("Create a tenant", "operator", (201, ""), "TenantBody"),
                                  "get": _op("List tenants", "operator", (200, ""))},
            "/v1/admin/keys": {"post": _op("Create a key of a tenant, or (`tenant: null`) an operator key", "operator",
                                           (201, ""), "KeyBody"),
                               "get": _op("List keys (of one tenant with `tenant`)", "operator", (200, ""),
                                          params=[_q("tenant")])},
            "/v1/admin/keys/{id}": {"delete": _op("Revoke any key but the last operator key (409 last_operator_key)",
                                                  "operator", (200, ""), params=[ID])},
            "/healthz": {"get": _op("Alive", None, (200, ""))},
            "/readyz": {"get": _op("Store healthy (503 with the reason when degraded or failed)", None, (200, ""))},
            "/openapi.json": {"get": _op("This document", None, (200, ""))},
            "/metrics": {"get": _op("Prometheus metrics", "operator", (200, ""))},
        },
    }
