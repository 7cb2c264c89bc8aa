"""Invoices and credit notes: runs, threshold billing, finalize (number), void, credit, list, preview, PDFs.

The invoicer works from the Parquet export, refreshed by each call that computes, so every call here that computes
or writes (and every read of the invoice store) runs on the thread pool. Invariants: the tenant is the key's; what
fails after a write was stored (refreshing the export after finalize, void or credit) is reported in the answer's
`warnings` and the write stands, so a client never repeats a change that was made.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from meter.billing.invoices import (
    STATUSES,
    CreditNote,
    CreditNoteBody,
    Invoice,
    InvoiceRun,
    InvoiceRunBody,
    RunWarning,
)
from meter.catalog.documents import DocumentSettings
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.table import MONTH, TEXT, Body, Param, PathParam, Route, enum

__all__ = ["ROUTES", "with_warnings"]


async def run_invoices(ctx: Context, request: Request, body: InvoiceRunBody) -> Answer:
    return 200, await ctx.call(opened(ctx.invoicer).run, request.tenant, body.period, body.finalize), {}


async def bill_thresholds(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.invoicer).thresholds, request.tenant, datetime.now(UTC)), {}


async def list_invoices(
    ctx: Context,
    request: Request,
    period: str | None,
    usage_period: str | None,
    status: str | None,
    customer: str | None,
    subscription: str | None,
) -> Answer:
    invoices = await ctx.call(opened(ctx.invoices).list, request.tenant)
    wanted = {
        "status": status,
        "customer": customer,
        "subscription": subscription,
        "period": period,
        "usage_period": usage_period,
    }
    for name, value in wanted.items():
        if value is not None:
            invoices = [i for i in invoices if getattr(i, name) == value]
    return 200, invoices, {}


async def get_invoice(ctx: Context, request: Request, invoice_id: str) -> Answer:
    return 200, await ctx.call(opened(ctx.invoices).get, request.tenant, invoice_id), {}


async def finalize_invoice(ctx: Context, request: Request, invoice_id: str) -> Answer:
    return 200, with_warnings(*await ctx.call(opened(ctx.invoicer).finalize, request.tenant, invoice_id)), {}


async def void_invoice(ctx: Context, request: Request, invoice_id: str) -> Answer:
    return 200, with_warnings(*await ctx.call(opened(ctx.invoicer).void, request.tenant, invoice_id)), {}


#: A PDF answer's OpenAPI schema.
PDF = {"application/pdf": {"type": "string", "format": "binary"}}


def _pdf(document: tuple[bytes, str], name: str) -> Answer:
    pdf, digest = document
    headers = {
        "content-type": "application/pdf",
        "content-disposition": f'inline; filename="{name}.pdf"',
        # The document never changes once written: its hash is its version.
        "etag": f'"{digest}"',
        "x-content-sha256": digest,
    }
    return 200, pdf, headers


async def invoice_pdf(ctx: Context, request: Request, invoice_id: str) -> Answer:
    return _pdf(await ctx.call(opened(ctx.invoicer).invoice_document, request.tenant, invoice_id), invoice_id)


async def credit_note_pdf(ctx: Context, request: Request, number: str) -> Answer:
    return _pdf(await ctx.call(opened(ctx.invoicer).credit_note_document, request.tenant, number), number)


async def put_document_settings(ctx: Context, request: Request, body: DocumentSettings) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).put_document_settings, request.tenant, body), {}


async def get_document_settings(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.billing).get_document_settings, request.tenant), {}


async def credit_invoice(ctx: Context, request: Request, invoice_id: str, body: CreditNoteBody) -> Answer:
    done = await ctx.call(opened(ctx.invoicer).credit, request.tenant, invoice_id, body.amount, body.reason)
    return 201, with_warnings(*done), {}


async def list_credit_notes(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.invoices).credit_notes, request.tenant), {}


async def upcoming_invoice(ctx: Context, request: Request, customer: str) -> Answer:
    as_of = datetime.now(UTC)
    return 200, await ctx.call(opened(ctx.invoicer).preview, request.tenant, customer, as_of), {}


def with_warnings(result: msgspec.Struct, warnings: list[RunWarning]) -> Any:
    """``result``, with ``warnings`` about what failed after it was stored (the write stands)."""
    if not warnings:
        return result
    return {**msgspec.to_builtins(result, builtin_types=(Decimal,)), "warnings": warnings}


INVOICE_ID = PathParam("invoice_id", description="The invoice's id")

ROUTES = [
    Route(
        "POST",
        "/v1/invoices/run",
        "admin",
        run_invoices,
        "Compute (or recompute) the drafts of the cycles starting in a month: their fees in advance "
        "and the previous cycles' usage in arrears; subscriptions that cannot be invoiced are listed "
        "in `errors`",
        returns=InvoiceRun,
        body=Body(InvoiceRunBody),
        errors=(404, 409),
    ),
    Route(
        "POST",
        "/v1/invoices/thresholds",
        "admin",
        bill_thresholds,
        "Issue the threshold invoices due now",
        returns=InvoiceRun,
        errors=(413, 415),
    ),
    Route(
        "GET",
        "/v1/invoices",
        "read",
        list_invoices,
        "List invoices",
        returns=list[Invoice],
        # period and usage_period first: they are checked (400 invalid_period) before anything is filtered.
        params=(
            Param("period", MONTH, "The month (YYYY-MM) the invoices' cycles start in"),
            Param("usage_period", MONTH, "The month (YYYY-MM) whose usage they bill in arrears"),
            Param("status", enum(*STATUSES), "Only invoices in this state"),
            Param("customer", TEXT, "Only this customer's invoices"),
            Param("subscription", TEXT, "Only this subscription's invoices"),
        ),
    ),
    Route(
        "GET",
        "/v1/invoices/{invoice_id}",
        "read",
        get_invoice,
        "Get an invoice with its explained lines",
        returns=Invoice,
        path_params=(INVOICE_ID,),
    ),
    Route(
        "POST",
        "/v1/invoices/{invoice_id}/finalize",
        "admin",
        finalize_invoice,
        "Finalize (number) a draft",
        returns=Invoice,
        path_params=(INVOICE_ID,),
        errors=(409, 413, 415),
    ),
    Route(
        "POST",
        "/v1/invoices/{invoice_id}/void",
        "admin",
        void_invoice,
        "Void a finalized invoice",
        returns=Invoice,
        path_params=(INVOICE_ID,),
        errors=(409, 413, 415),
    ),
    Route(
        "POST",
        "/v1/invoices/{invoice_id}/credit-notes",
        "admin",
        credit_invoice,
        "Credit part of a finalized invoice",
        status=201,
        returns=CreditNote,
        body=Body(CreditNoteBody),
        path_params=(INVOICE_ID,),
        errors=(409,),
    ),
    Route(
        "GET",
        "/v1/invoices/{invoice_id}/pdf",
        "read",
        invoice_pdf,
        "Download a finalized invoice's PDF, as written at its finalization (its SHA-256 in ETag)",
        media=PDF,
        path_params=(INVOICE_ID,),
        errors=(409,),
    ),
    Route("GET", "/v1/credit-notes", "read", list_credit_notes, "List credit notes", returns=list[CreditNote]),
    Route(
        "GET",
        "/v1/credit-notes/{number}/pdf",
        "read",
        credit_note_pdf,
        "Download a credit note's PDF, as written when it was issued (its SHA-256 in ETag)",
        media=PDF,
        path_params=(PathParam("number", "CN-000001", "The credit note's number"),),
    ),
    Route(
        "PUT",
        "/v1/documents/settings",
        "admin",
        put_document_settings,
        "Set what invoice PDFs show of the seller (name, address, email), and their logo, accent colour, footer and "
        "payment terms; documents already issued never change",
        returns=DocumentSettings,
        body=Body(DocumentSettings, "invalid_catalog"),
    ),
    Route(
        "GET",
        "/v1/documents/settings",
        "read",
        get_document_settings,
        "Get the invoice document settings (the defaults until set)",
        returns=DocumentSettings,
    ),
    Route(
        "GET",
        "/v1/customers/{customer}/upcoming-invoice",
        "read",
        upcoming_invoice,
        "Preview the customer's next invoices",
        returns=list[Invoice],
        path_params=(PathParam("customer", "cust-1", "The customer's id"),),
    ),
]
