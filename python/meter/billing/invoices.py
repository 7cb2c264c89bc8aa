"""Invoices and credit notes as data: the structs the store keeps and the API answers with, and their checks.

Lifecycle: a **draft** is recomputed by every invoicing run until it is **finalized**, which numbers it
(``INV-000001``, sequential and gapless per tenant, never reused), taxes it and makes its lines immutable: it is then
**open** until what it asks for is settled (payments, credit notes, the customer's credit balance), then **paid**; an
open invoice can be marked **uncollectible** (written off; a later payment still settles it) or **voided** while
nothing was paid on it (it then no longer counts as billed: re-running its period issues a new draft, ``<id>-r2``,
which gets a new number when finalized). Finalized invoices are corrected by **credit notes** (``CN-000001``), never
edited. A draft is finalized only while the subscription's billed invoices (open, paid or uncollectible:
:data:`BILLED`) are those it was computed against (its ``basis``); otherwise it is **stale** (``stale_draft``): it
could bill again what another invoice billed since, and its period must be re-run.
The transitions and the numbering are the store's (:mod:`meter.billing.store`); this module only describes them.

What has been billed is read from finalized invoices: each usage or fee line carries the ``key`` of what it bills
(subscription, price, version, cycle: the text of a :mod:`meter.billing.keys` key), so a later run bills only the
difference: the rest of a cycle after a threshold invoice, late usage, or a plan change or cancellation after the
fees in advance were finalized, as adjustment lines that name the invoices they correct.

Money: every amount here is already rounded, half to even, to the currency's minor unit (each line by
:mod:`meter.billing.invoicing`; totals are sums of lines). :func:`check_credit_amount` refuses a credit note's amount
with more digits than the minor unit rather than round it (``5`` in USD becomes ``5.00``; ``5.001`` is refused).
:func:`check_invoice` holds every amount and quantity to what the Parquet export holds (``decimal128(38, 9)``), so
that whatever is stored can be exported.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal
from pathlib import Path
from typing import Literal, get_args

import msgspec

from meter.catalog.prices import Cadence
from meter.exceptions import InvalidInput
from meter.pricing.errors import fail
from meter.pricing.exact import DECIMAL_BOUND, decimal_problem
from meter.pricing.money import minor_units

__all__ = [
    "BILLED",
    "STATUSES",
    "Collection",
    "CreditNote",
    "CreditNoteBody",
    "Fresh",
    "Invoice",
    "InvoiceLine",
    "InvoiceRun",
    "InvoiceRunBody",
    "LineDetail",
    "LineTax",
    "LineKind",
    "Reason",
    "RunError",
    "RunWarning",
    "ServicePeriod",
    "Status",
    "TaxAmount",
    "Timing",
    "check_credit_amount",
    "check_exportable",
    "check_invoice",
]

#: An invoice's lifecycle (see the module doc); :data:`STATUSES` lists them for filters and the OpenAPI document.
Status = Literal["draft", "open", "paid", "uncollectible", "void"]
STATUSES: tuple[str, ...] = get_args(Status)
#: The statuses of a finalized invoice that was not voided: what it billed counts as billed.
BILLED: frozenset[str] = frozenset({"open", "paid", "uncollectible"})
#: How a finalized invoice is collected: a payment provider charges the customer's payment method (``automatic``), or
#: the customer pays it by other means, recorded as manual payments (``send_invoice``).
Collection = Literal["automatic", "send_invoice"]
#: What a line is: a charge (``recurring`` fee, ``usage``, ``adjustment`` of a finalized one), a ``commit`` bought,
#: a ``shortfall`` billed, a ``discount`` or a ``credit`` drawn.
LineKind = Literal["recurring", "usage", "adjustment", "commit", "shortfall", "discount", "credit"]
#: Whether a line's service period is billed at its start or its end: a price's cadence (usage is in arrears).
Timing = Cadence
#: Why an invoice was issued: its cycle began, or usage reached the subscription's threshold within the cycle.
#: Why an invoice was issued: a billing cycle, a threshold reached early, a top-up of prepaid credit bought.
Reason = Literal["cycle", "threshold", "top_up"]


class LineDetail(msgspec.Struct, omit_defaults=True):
    """One priced component of a line.

    One priced component of a line: a tier, a matrix cell, a package count, a percentage; or the step up to the
    price's ``minimum`` or down to its ``maximum`` (``component`` ``minimum``/``maximum``, ``units`` 1 and
    ``unit_price`` = ``subtotal`` = the step). The details of a line add up exactly to what its key rates at
    (``rated``, before rounding to the minor unit).
    """

    component: str
    units: Decimal
    unit_price: Decimal
    subtotal: Decimal
    tier: int | None = None
    #: The tier's bounds ``[tier_from, tier_to)``; ``tier_to`` is absent for the last, unbounded tier.
    tier_from: Decimal | None = None
    tier_to: Decimal | None = None
    combination: str | None = None
    flat_fee: Decimal | None = None
    #: A matrix combination's units covered by the free allowance.
    free_units: Decimal | None = None
    #: Percentage fees raised to ``min_fee`` or cut to ``max_fee`` (per event, or the period's one).
    raised_to_min_fee: int | None = None
    cut_to_max_fee: int | None = None


class InvoiceLine(msgspec.Struct):
    kind: LineKind
    description: str
    amount: Decimal
    period_start: datetime
    period_end: datetime
    #: What the line bills, for what is billed later: ``subscription|price|version|start|end``.
    key: str | None = None
    price: str | None = None
    #: The plan version whose price the line bills.
    version: int | None = None
    #: Whether the service period is billed in advance (a recurring fee ``in_advance``) or in arrears (usage).
    timing: Timing | None = None
    model: str | None = None
    meter: str | None = None
    #: What the line adds: the quantity rated now minus the quantity finalized invoices billed for the key.
    quantity: Decimal | None = None
    #: The amount rated for the whole ``key`` now; ``amount`` is ``rated - billed``.
    rated: Decimal | None = None
    #: What finalized invoices billed for the key already (``corrects`` names them), and the quantity they billed.
    billed: Decimal | None = None
    billed_quantity: Decimal | None = None
    corrects: list[str] = []
    details: list[LineDetail] = []
    #: How to list the events behind the line.
    events: str | None = None
    #: The commit or credit a ``credit`` line draws on.
    grant: str | None = None


class TaxAmount(msgspec.Struct, omit_defaults=True):
    """An invoice's tax at one rate in one jurisdiction: the base it applies to and the amount (rounded)."""

    rate: str
    name: str
    country: str
    percentage: Decimal
    inclusive: bool
    #: The base the rate applies to, net of tax.
    taxable: Decimal
    amount: Decimal
    region: str | None = None


class LineTax(msgspec.Struct, omit_defaults=True):
    """The tax on one line (``line`` is its index in ``lines``) at one rate, rounded half to even on its own."""

    line: int
    rate: str
    inclusive: bool
    taxable: Decimal
    amount: Decimal


class Invoice(msgspec.Struct):
    id: str
    tenant: str
    customer: str
    subscription: str
    currency: str
    reason: Reason
    period_start: datetime
    period_end: datetime
    issued_at: datetime
    lines: list[InvoiceLine]
    subtotal: Decimal
    total: Decimal
    status: Status = "draft"
    number: str | None = None
    finalized_at: datetime | None = None
    voided_at: datetime | None = None
    #: The month (``YYYY-MM``, customer's time zone) the cycle starts in: the run's ``period``.
    period: str | None = None
    #: The service period whose usage the invoice bills in arrears (``[usage_start, usage_end)``) and the month it
    #: starts in: ``GET /v1/invoices?usage_period=2026-11`` lists the invoices that bill November's usage.
    usage_start: datetime | None = None
    usage_end: datetime | None = None
    usage_period: str | None = None
    #: The invoice this one reissues after it was voided.
    reissues: str | None = None
    #: The subscription's finalized invoices this one was computed against (what they billed is not billed again). A
    #: draft is finalized only while they are still exactly the subscription's finalized invoices: otherwise it is
    #: stale (it could bill twice what another invoice billed since) and its period must be re-run.
    basis: list[str] | None = None
    #: Tax, set when the invoice is finalized: the total (``None`` on a draft), grouped by rate and jurisdiction, per
    #: line; ``tax_note`` says why an invoice carries none (``exempt``, ``reverse_charge``).
    tax: Decimal | None = None
    taxes: list[TaxAmount] = []
    line_taxes: list[LineTax] = []
    tax_note: str | None = None
    #: Collection, set when the invoice is finalized (``None`` on a draft). ``amount_due`` is ``total`` less the
    #: customer's credit balance applied (``credit_applied``); ``amount_remaining`` is ``amount_due`` less what was
    #: paid and credited (credit notes up to what was owed); the invoice is ``paid`` when that reaches zero.
    collection: Collection | None = None
    credit_applied: Decimal | None = None
    amount_due: Decimal | None = None
    amount_paid: Decimal | None = None
    amount_credited: Decimal | None = None
    amount_remaining: Decimal | None = None
    paid_at: datetime | None = None
    uncollectible_at: datetime | None = None


@dataclass(frozen=True)
class Fresh:
    """Rows of the invoices export for invoices just written, so that the export need not decode them from the store.

    ``directory`` holds them as ``invoices.parquet`` and ``invoice_lines.parquet``, in the export's schemas and in
    the order of the ids (the store's), a row group per chunk written; ``ids`` are the invoices they hold.
    :func:`meter.lake.invoices.export_invoices` moves them into place, or merges them with what it reads from the
    store, and removes the directory (so does :meth:`discard` when they are not used).
    """

    directory: Path
    ids: frozenset[str]

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class CreditNote(msgspec.Struct):
    id: str
    number: str
    invoice: str
    amount: Decimal
    reason: str
    created_at: datetime
    #: The tax the note carries back (its share of the invoice's tax), and per rate.
    tax: Decimal | None = None
    taxes: list[TaxAmount] = []
    #: The customer and currency (those of its invoice).
    customer: str | None = None
    currency: str | None = None


class ServicePeriod(msgspec.Struct):
    """``[start, end)``, UTC."""

    start: datetime
    end: datetime


class RunError(msgspec.Struct):
    """A subscription an invoicing run could not invoice, and why; the others were invoiced."""

    subscription: str
    code: str
    message: str


class RunWarning(msgspec.Struct):
    """Something that went wrong after what was asked for was done and stored (such as refreshing the export)."""

    code: str
    message: str


class InvoiceRun(msgspec.Struct):
    """The answer of an invoicing run.

    The answer of an invoicing run: the invoices computed (drafts, or finalized when asked), the subscriptions
    that could not be invoiced, and the service periods the run covers: the fees in advance of the cycles starting in
    ``period``, and the usage of the cycles before them, billed in arrears.
    """

    period: str
    #: A list, or the run's :class:`StoredInvoices` (read from the store when iterated).
    invoices: Sequence[Invoice]
    errors: list[RunError] = []
    warnings: list[RunWarning] = []
    fees_in_advance: ServicePeriod | None = None
    usage_in_arrears: ServicePeriod | None = None


class InvoiceRunBody(msgspec.Struct, forbid_unknown_fields=True):
    #: The month whose cycles are invoiced, YYYY-MM.
    period: str
    finalize: bool = False


class CreditNoteBody(msgspec.Struct, forbid_unknown_fields=True):
    amount: Decimal
    reason: str


# Room for every digit of a credit note's amount (the default context keeps 28).
_CONTEXT = Context(prec=80)


def check_exportable(value: Decimal | None, what: str) -> None:
    """Raises ``InvalidInput`` unless ``value`` is None or fits the export's ``decimal128(38, 9)`` exactly."""
    if value is not None and (problem := decimal_problem(value)) is not None:
        fail(f"{what} {problem}: amounts and quantities are stored as the export holds them", "invalid_amount")


def check_invoice(invoice: Invoice) -> None:
    """Raises ``InvalidInput`` unless every amount and quantity of ``invoice`` fits the export."""
    for name in ("subtotal", "total", "tax"):
        check_exportable(getattr(invoice, name), f"invoice {invoice.id}: {name}")
    for i, line in enumerate(invoice.lines, start=1):
        for name in ("amount", "quantity", "rated", "billed", "billed_quantity"):
            check_exportable(getattr(line, name), f"invoice {invoice.id} line {i}: {name}")


def check_credit_amount(amount: Decimal, currency: str) -> Decimal:
    """A credit note's amount, checked.

    A credit note's amount: positive, finite, with at most ``currency``'s minor-unit digits; returned at exactly
    that many digits (``5`` in USD is ``5.00``).
    """
    digits = minor_units(currency)
    quantum = Decimal(1).scaleb(-digits)
    if not amount.is_finite() or amount <= 0 or amount >= DECIMAL_BOUND:
        raise InvalidInput(
            f"a credit note's amount must be a positive decimal amount of {currency}; got {amount}",
            code="invalid_credit_note",
        )
    if amount != amount.quantize(quantum, context=_CONTEXT):
        raise InvalidInput(
            f"a credit note's amount must have at most {digits} decimals, {currency}'s minor unit "
            f"({quantum} {currency}); got {amount}",
            code="invalid_credit_note",
        )
    return amount.quantize(quantum, context=_CONTEXT)
