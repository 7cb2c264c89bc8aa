"""Stripe Tax as a tax provider: one ``stripe.tax.Calculation`` per invoice, through the official ``stripe`` SDK.

The request (``POST /v1/tax/calculations``): the invoice's currency (lower case), one line item per line with a
positive taxable base (``amount`` in minor units, ``reference`` the line's index, ``tax_code`` when the line has one,
``tax_behavior`` inclusive when the seller's prices include tax), the customer's billing address and tax ids
(``customer_details``, ``address_source=billing``), the tax point (``tax_date``), and the line items with their tax
breakdown expanded in the answer. Stripe takes no negative amount: reductions are spread over the lines they reduce
first (:func:`meter.money.tax.compute.taxable_bases`), and what no line can absorb is left untaxed.

Each call carries an idempotency key derived from the tenant, the invoice and a digest of the request: a retry after
a crash or a timeout gets Stripe's first answer (never a second calculation), and a draft recomputed since gets a new
one. Stripe's answer is read per line item and per breakdown entry: a rate is named by its jurisdiction, tax type and
percentage (``stripe:DE:vat:19.0``). An error of Stripe's is a 503 ``tax_unavailable`` (retry: nothing was written).
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import msgspec
import stripe

from meter.billing.invoices import LineTax, TaxAmount
from meter.exceptions import MeterError
from meter.money.tax.compute import group_taxes
from meter.money.tax.provider import TaxRequest, TaxResult
from meter.pricing.money import minor_units

__all__ = ["StripeTax", "idempotency_key"]

_ZERO = Decimal(0)


def idempotency_key(base: str, params: dict[str, Any]) -> str:
    """``<base>-<digest of params>``: the same request, the same key; at most the 255 characters Stripe allows."""
    digest = hashlib.sha256(msgspec.json.encode(params, order="sorted")).hexdigest()[:24]
    return f"{base[:230]}-{digest}"


class StripeTax:
    """Stripe Tax with ``api_key`` (the seller's Stripe account); ``inclusive``: whether prices include tax."""

    name = "stripe"

    def __init__(self, api_key: str, inclusive: bool = False) -> None:
        self.api_key, self.inclusive = api_key, inclusive

    def params(self, request: TaxRequest) -> dict[str, Any]:
        """The calculation's parameters (what the SDK form-encodes)."""
        digits = minor_units(request.invoice.currency)
        items = []
        for line in request.lines:
            minor = int(line.amount.scaleb(digits))
            if minor <= 0:
                continue
            item: dict[str, Any] = {
                "amount": minor,
                "reference": str(line.line),
                "tax_behavior": "inclusive" if self.inclusive else "exclusive",
            }
            if line.tax_code is not None:
                item["tax_code"] = line.tax_code
            items.append(item)
        address = request.customer.address
        details: dict[str, Any] = {"address_source": "billing"}
        fields = {"country": request.country}
        if address is not None:
            given = {"line1": address.line1, "line2": address.line2, "city": address.city}
            given |= {"postal_code": address.postal_code, "state": address.region}
            fields |= {k: v for k, v in given.items() if v}
        details["address"] = fields
        if request.customer.tax_ids:
            details["tax_ids"] = [{"type": t.type, "value": t.value} for t in request.customer.tax_ids]
        return {
            "currency": request.invoice.currency.lower(),
            "line_items": items,
            "customer_details": details,
            "tax_date": int(request.date.timestamp()),
            "expand": ["line_items", "line_items.data.tax_breakdown"],
        }

    def calculate(self, request: TaxRequest) -> TaxResult:
        params = self.params(request)
        if not params["line_items"]:
            return TaxResult(note="No tax: nothing on the invoice is taxable (no line above zero).")
        key = idempotency_key(request.idempotency_key, params)
        try:
            calculation = stripe.tax.Calculation.create(api_key=self.api_key, idempotency_key=key, **params)
        except stripe.StripeError as e:
            raise MeterError(
                f"Stripe Tax could not compute the tax of invoice {request.invoice.id} ({type(e).__name__}: "
                f"{e.user_message or e}); nothing was written: retry the finalization",
                code="tax_unavailable",
            ) from None
        return self.read(request, calculation)

    def read(self, request: TaxRequest, calculation: Any) -> TaxResult:
        """Stripe's answer as line taxes and groups."""
        currency = request.invoice.currency
        digits = minor_units(currency)

        def money(minor: int) -> Decimal:
            return Decimal(minor).scaleb(-digits)

        found: list[LineTax] = []
        groups: dict[str, TaxAmount] = {}
        reasons: set[str] = set()
        items = calculation.line_items.data if calculation.line_items is not None else []
        for item in items:
            line = int(item.reference)
            for part in item.tax_breakdown or []:
                reasons.add(str(part.taxability_reason))
                details = part.tax_rate_details
                if details is None:  # not taxed here (not registered, exempt, reverse charge): no rate
                    continue
                jurisdiction = part.jurisdiction
                where = jurisdiction.country + (f"-{jurisdiction.state}" if jurisdiction.state else "")
                rate = f"stripe:{where}:{details.tax_type}:{details.percentage_decimal}"
                groups[rate] = TaxAmount(
                    rate=rate,
                    name=f"{details.display_name} ({jurisdiction.display_name})",
                    country=jurisdiction.country,
                    region=jurisdiction.state or None,
                    percentage=Decimal(details.percentage_decimal),
                    inclusive=item.tax_behavior == "inclusive",
                    taxable=_ZERO,
                    amount=_ZERO,
                )
                found.append(
                    LineTax(
                        line=line,
                        rate=rate,
                        inclusive=item.tax_behavior == "inclusive",
                        taxable=money(part.taxable_amount),
                        amount=money(part.amount),
                    )
                )
        note = f"Tax computed by Stripe Tax (calculation {calculation.id})."
        if reasons == {"reverse_charge"}:
            note = "Reverse charge: the customer accounts for the tax itself (Stripe Tax). " + note
        elif reasons == {"customer_exempt"}:
            note = "Tax exempt: the customer is exempt from tax (Stripe Tax). " + note
        elif reasons and reasons <= {"not_collecting", "not_subject_to_tax", "not_supported", "zero_rated"}:
            note = f"No tax: Stripe Tax collects none here ({', '.join(sorted(reasons))}). " + note
        return TaxResult(found, group_taxes(found, groups, currency), note)
