"""The console's pages: customers and invoices, each reading what the API reads for the signed-in tenant.

Every page calls the stores on the app's thread pool (``ctx.call``), as the API's handlers do; actions go through the
same invoicer as ``POST /v1/invoices/{id}/finalize`` and the others, then redirect back to the page (303), which
says what was done.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, urlencode

from meter.billing.invoices import STATUSES, Invoice
from meter.console.app import COOKIE, ROOT, Console, Handler, Page, redirect
from meter.exceptions import InvalidInput
from meter.server.context import opened
from meter.server.http import Answer

__all__ = ["ROUTES"]

#: Rows per page of a list.
PAGE_ROWS = 50


async def customers(console: Console, page: Page) -> Answer:
    """Customers, searched by id, name or email (case-insensitive), a page of :data:`PAGE_ROWS` at a time."""
    query = (page.request.param("q") or "").strip()
    everyone = await console.ctx.call(opened(console.ctx.billing).list_customers, page.session.tenant)
    needle = query.casefold()
    found = [c for c in everyone if not needle or any(needle in (v or "").casefold() for v in (c.id, c.name, c.email))]
    number, rows = _page_of(page, found)
    return console.page(
        "customers.html", page.session, query=query, customers=rows, total=len(found), everyone=len(everyone),
        pages=_pages(page, len(found), number, q=query),
    )  # fmt: skip


async def customer(console: Console, page: Page) -> Answer:
    tenant, customer_id = page.session.tenant, page.args["customer"]
    ctx = console.ctx
    found = await ctx.call(opened(ctx.billing).get_customer, tenant, customer_id)
    subscriptions = [
        s for s in await ctx.call(opened(ctx.billing).list_subscriptions, tenant) if s.customer == customer_id
    ]
    store = opened(ctx.invoices)

    def of_customer() -> list[Invoice]:
        # By its subscriptions' prefixes: the customer's invoices only are read, however many the tenant has.
        return [i for s in subscriptions for i in store.of_subscription(tenant, s.id) if i.customer == customer_id]

    invoices = await ctx.call(of_customer)
    balance = ctx.live.balance(tenant, customer_id) if ctx.live is not None else None
    standing = ctx.live.standing(tenant, customer_id) if ctx.live is not None else None
    return console.page(
        "customer.html", page.session, customer=found, subscriptions=subscriptions, invoices=_newest(invoices),
        balance=balance, standing=standing,
    )  # fmt: skip


async def invoices(console: Console, page: Page) -> Answer:
    status = page.request.param("status") or ""
    if status and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}; got {status!r}", code="invalid_query")
    listed = await console.ctx.call(opened(console.ctx.invoices).list, page.session.tenant)
    chosen = _newest([i for i in listed if not status or i.status == status])
    number, rows = _page_of(page, chosen)
    return console.page(
        "invoices.html", page.session, invoices=rows, status=status, statuses=STATUSES, total=len(chosen),
        pages=_pages(page, len(chosen), number, status=status),
    )  # fmt: skip


async def invoice(console: Console, page: Page) -> Answer:
    tenant, invoice_id = page.session.tenant, page.args["invoice_id"]
    ctx = console.ctx
    found = await ctx.call(opened(ctx.invoices).get, tenant, invoice_id)
    notes = [n for n in await ctx.call(opened(ctx.invoices).credit_notes, tenant) if n.invoice == invoice_id]
    return console.page(
        "invoice.html", page.session, invoice=found, credit_notes=notes, done=page.request.param("done"),
    )  # fmt: skip


async def invoice_pdf(console: Console, page: Page) -> Answer:
    invoicer = opened(console.ctx.invoicer)
    pdf, digest = await console.ctx.call(invoicer.invoice_document, page.session.tenant, page.args["invoice_id"])
    headers = {"content-type": "application/pdf", "etag": f'"{digest}"', "cache-control": "private, max-age=3600"}
    return 200, pdf, headers | {"content-disposition": f'inline; filename="{page.args["invoice_id"]}.pdf"'}


async def finalize(console: Console, page: Page) -> Answer:
    await console.ctx.call(opened(console.ctx.invoicer).finalize, page.session.tenant, page.args["invoice_id"])
    return _back(page, "finalized")


async def void(console: Console, page: Page) -> Answer:
    await console.ctx.call(opened(console.ctx.invoicer).void, page.session.tenant, page.args["invoice_id"])
    return _back(page, "voided")


async def credit(console: Console, page: Page) -> Answer:
    try:
        amount = Decimal(page.form.get("amount", ""))
    except InvalidOperation:
        raise InvalidInput("the amount must be a decimal number, such as 12.50", code="invalid_credit_note") from None
    reason = page.form.get("reason", "").strip()
    if not reason:
        raise InvalidInput("say why the invoice is credited", code="invalid_credit_note")
    invoicer = opened(console.ctx.invoicer)
    await console.ctx.call(invoicer.credit, page.session.tenant, page.args["invoice_id"], amount, reason)
    return _back(page, "credited")


async def sign_out(console: Console, page: Page) -> Answer:
    return redirect(f"{ROOT}/sign-in", {"set-cookie": f"{COOKIE}=; Max-Age=0; Path={ROOT}; HttpOnly; SameSite=Strict"})


def _back(page: Page, done: str) -> Answer:
    return redirect(f"{ROOT}/invoices/{quote(page.args['invoice_id'])}?done={done}")


def _newest(invoices: list[Invoice]) -> list[Invoice]:
    return sorted(invoices, key=lambda i: (i.issued_at, i.id), reverse=True)


def _page_of(page: Page, rows: list[Any]) -> tuple[int, list[Any]]:
    raw = page.request.param("page") or "1"
    number = int(raw) if raw.isascii() and raw.isdigit() and int(raw) >= 1 else 1
    return number, rows[(number - 1) * PAGE_ROWS : number * PAGE_ROWS]


def _pages(page: Page, total: int, number: int, **query: str) -> dict[str, str | None]:
    """The links to the previous and next pages of a list, keeping its query."""
    kept = {k: v for k, v in query.items() if v}

    def link(n: int) -> str:
        return f"{page.request.path}?{urlencode(kept | {'page': str(n)})}"

    last = max(1, -(-total // PAGE_ROWS))
    return {
        "previous": link(number - 1) if number > 1 else None,
        "next": link(number + 1) if number < last else None,
        "label": f"page {min(number, last)} of {last}",
    }


ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", f"{ROOT}/customers", customers, "read"),
    ("GET", f"{ROOT}/customers/{{customer}}", customer, "read"),
    ("GET", f"{ROOT}/invoices", invoices, "read"),
    ("GET", f"{ROOT}/invoices/{{invoice_id}}", invoice, "read"),
    ("GET", f"{ROOT}/invoices/{{invoice_id}}/pdf", invoice_pdf, "read"),
    ("POST", f"{ROOT}/invoices/{{invoice_id}}/finalize", finalize, "admin"),
    ("POST", f"{ROOT}/invoices/{{invoice_id}}/void", void, "admin"),
    ("POST", f"{ROOT}/invoices/{{invoice_id}}/credit", credit, "admin"),
    ("POST", f"{ROOT}/sign-out", sign_out, "read"),
]
