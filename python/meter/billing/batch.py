"""The invoice run over whole tables: the cycle invoices of a month for every plain subscription at once.

:func:`meter.billing.invoicing.invoice_period` hands this module the subscriptions whose invoices follow from their
plan alone, and keeps the others on its per-subscription path. Plain means: no migrations, overrides, commits or
credits, no finalized invoice yet (nothing billed to subtract, correct or take back), discounts whose numbers have
no more decimals than the currency, and ids that the texts below can write without quoting rules (see
:func:`plain_subscriptions`). For those, the per-subscription rules reduce to what is computed here, column by column:

- **cycles**: the cycles starting in the month, per distinct (time zone, cycle, anchor) (calendar cycles do not
  depend on the start; anniversary ones do, and are keyed by it), from :mod:`meter.billing.cycles` itself;
- **segments**: one per cycle (no migrations), clipped to ``[start, end)``; its proration and note come from
  :func:`meter.billing.cycles.segments`, per distinct clipped span (a cycle covered throughout: 1 and no note);
- **charges**: the fees in advance of the cycle, then the flat fees in arrears and usage of the previous cycle, in the
  order of the version's prices, with the keys and descriptions the per-subscription path gives them;
- **rating**: :func:`meter.pricing.rating.rate`, :data:`RATE_SLICE` charges at a time (its intermediate columns are
  the peak of a run's memory);
- **discounts**: on one price's lines, then on the invoice, rank by rank (an invoice discount's base includes the
  discounts before it), rounded half to even as ``invoicing._discount_lines`` does;
- **lines and invoices**: each line's amount is its rated amount rounded to the minor unit (nothing was billed
  before), the subtotal and total their sum; written, :data:`CHUNK` drafts at a time and in the order of their ids,
  as the JSON that ``msgspec.json.encode`` gives the per-subscription :class:`~meter.billing.invoices.Invoice` (see
  :mod:`meter.pricing.text`), and as the rows of the invoices export.

Anything this module cannot write exactly as the per-subscription path would (a decimal whose coefficient has more
than 28 digits, which ``Decimal.normalize`` would round) raises :class:`NotPlain`, and the caller invoices those
subscriptions the per-subscription way; a charge that rating refuses raises :class:`Refused`, and the caller leaves
its subscription to that path. ``tests/test_invoice_batch.py`` holds the two paths to the same bytes.

This module is billing, not pricing: apart from rating, every step is invoice assembly (cycles, charges, discounts,
the stored JSON, the export's rows). The pure pieces it is built from are pricing's: :func:`meter.pricing.rate`,
half-even division of money (:func:`meter.pricing.money.divide_half_even`, for percent discounts), the text of
columns (:mod:`meter.pricing.text`); and the line keys' text is :func:`meter.billing.keys.charge_key_expr`, the
same encoding as :meth:`~meter.billing.keys.ChargeKey.text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import msgspec
import polars as pl

from meter.billing import cycles
from meter.billing.invoices import Invoice
from meter.billing.keys import charge_key_expr
from meter.billing.usage import event_amounts, period_quantities
from meter.catalog.billing import Subscription
from meter.catalog.types import trusted
from meter.exceptions import MeterError
from meter.lake.catalog import Snapshot
from meter.lake.layout import events_cited
from meter.pricing.charges import price_frame
from meter.pricing.money import MAX_MINOR_UNITS, divide_half_even, minor_units_expr
from meter.pricing.rating import rate
from meter.pricing.steps import step
from meter.pricing.text import fixed_text, iso_text, json_string, time_text, with_normalized

__all__ = ["Batch", "Chunk", "NotPlain", "Refused", "invoice_batch", "plain_subscriptions"]

_UTC = pl.Datetime("us", "UTC")


def _draft_tail() -> str:
    """The fields a draft leaves at their defaults after ``basis`` (tax, collection...), as msgspec encodes them."""
    fields = msgspec.structs.fields(Invoice)
    after = [f for f in fields][[f.name for f in fields].index("basis") + 1 :]
    return "".join(
        f',"{f.encode_name}":'
        + msgspec.json.encode(f.default_factory() if f.default is msgspec.NODEFAULT else f.default).decode()
        for f in after
    )


#: How every draft's JSON ends: ``basis`` (empty: no invoice billed yet) and the fields set at finalization.
_DRAFT_END = ',"reissues":null,"basis":[]' + _draft_tail() + "}"
#: Drafts written at a time: their texts (about 5 kB an invoice) are most of the memory a run takes.
CHUNK = 25_000
#: Charges rated at a time.
RATE_SLICE = 1_500_000
#: Ids written between single quotes by ``repr`` as they are (the ``events`` text quotes the customer with repr).
_REPR_SAFE = r"^[ !#-&(-\[\]-~]*$"


class NotPlain(Exception):  # noqa: N818 - a signal to the caller, not an error of the input
    """A value the columnar texts cannot write as the per-subscription path does: invoice those the other way."""


class Refused(Exception):  # noqa: N818 - a signal to the caller: leave this subscription out
    """Rating refused a charge of ``subscription`` (unpriced usage, say).

    Invoice it the per-subscription way, which reports why, and the others over whole tables.
    """

    def __init__(self, subscription: str, error: MeterError) -> None:
        super().__init__(f"subscription {subscription!r}: {error.message}")
        self.subscription = subscription


def plain_subscriptions(subs: pl.DataFrame) -> pl.Series:
    """Which rows of the snapshot's subscriptions table this module invoices: a Boolean per row.

    The table comes with the customers' ``timezone`` and ``currency``.
    """
    none = [pl.col(terms) == "[]" for terms in ("overrides", "commits", "credits", "migrations")]
    # Usage is measured over whole minutes: rating refuses other spans, and the per-subscription path names them.
    minutes = [(pl.col(t).dt.truncate("1m") == pl.col(t)).fill_null(True) for t in ("start", "end")]
    plain = subs.select(
        pl.all_horizontal(none)
        & pl.all_horizontal(minutes)
        & pl.col("timezone").is_not_null()
        & pl.col("customer").str.contains(_REPR_SAFE)
        & ~pl.col("id").str.contains(r'["\\]')
        & pl.col("cycle").is_in(list(cycles.CYCLE_MONTHS))
        & pl.col("anchor").is_in(list(cycles.ANCHORS))
    ).to_series()
    discounted = subs.filter(pl.col("discounts") != "[]")
    if discounted.height == 0:
        return plain
    # A discount is written here when its numbers read as plain decimals (no exponent), a percent with at most 9
    # decimals and an amount with at most the currency's: then every base and amount has the currency's decimals.
    terms = _discount_rows(discounted)
    decimals = pl.col("amount").str.extract(r"\.(\d*)$").str.len_chars().fill_null(0)
    writable = (pl.col("percent").is_null() | pl.col("percent").str.contains(r"^\d+(\.\d{1,9})?$")) & (
        pl.col("amount").is_null()
        | (pl.col("amount").str.contains(r"^\d+(\.\d+)?$") & (decimals <= minor_units_expr(pl.col("currency"))))
    )
    refused = terms.filter(~writable.fill_null(False)).get_column("id").unique()
    return plain & ~subs.get_column("id").is_in(refused.implode())


_DISCOUNT = pl.List(
    pl.Struct(
        {
            "id": pl.String,
            "start": pl.String,
            "end": pl.String,
            "percent": pl.String,
            "amount": pl.String,
            "price": pl.String,
        }
    )
)


def _discount_rows(subs: pl.DataFrame) -> pl.DataFrame:
    """One row per discount of ``subs``, the discount's fields as the stored text.

    Columns: the subscription's ``id`` and ``currency``, ``n`` (the discount's position), ``d_id``, ``d_start``,
    ``d_end``, ``percent``, ``amount``, ``d_price``.
    """
    found = (
        subs.select("id", "currency", d=pl.col("discounts").str.json_decode(_DISCOUNT))
        .with_columns(n=pl.int_ranges(pl.col("d").list.len(), dtype=pl.UInt32))
        .explode("d", "n")
        .drop_nulls("d")
        .unnest("d", separator="\0")
    )
    return found.rename(
        {
            "d\0id": "d_id",
            "d\0start": "d_start",
            "d\0end": "d_end",
            "d\0percent": "percent",
            "d\0amount": "amount",
            "d\0price": "d_price",
        }
    )


def invoice_batch(snapshot: Snapshot, out: Path, subs: pl.DataFrame, month: datetime, after: datetime) -> Batch:
    """The drafts of the cycles of ``subs`` that start in ``[month, after)`` (naive: each customer's local time).

    ``subs``: rows of the snapshot's subscriptions table that :func:`plain_subscriptions` selects, with ``order``,
    ``timezone`` and ``currency``. Rates them all; :meth:`Batch.chunks` then writes them, a chunk at a time. Raises
    :class:`NotPlain` or whatever rating raises: the caller then invoices them one by one.
    """
    with step("cycles"):
        drafts = _drafts(subs, month, after)
        prices = _prices(snapshot)
        charges = _charges(drafts, prices)
    if charges.height == 0:  # no cycle of these starts in the month (an annual plan's other months), or no price
        raise NotPlain("nothing to rate")
    rated, details = _rate(snapshot, out, charges, drafts, prices)
    # Every cycle counts, with an invoice or not, as on the per-subscription path.
    fees = _span(drafts, "p_start", "p_end")
    usage = _span(drafts.filter(pl.col("a_start").is_not_null()), "a_start", "a_end")
    discounts = subs.filter(pl.col("discounts") != "[]").select("id", "currency", "discounts")
    return Batch(
        snapshot.tenant, drafts, prices, _tiers(snapshot, prices), charges, rated, details, discounts, fees, usage
    )


def _tiers(snapshot: Snapshot, prices: pl.DataFrame) -> pl.DataFrame:
    """``price_row``, ``tier`` and the tier's bounds as the catalog wrote them (``str`` of the stored decimals)."""
    rows = []
    found = {(plan, version, price.id): price for (plan, version), every in snapshot.prices.items() for price in every}
    for price_row, plan, version, price_id in prices.select("price_row", "plan", "version", "price").iter_rows():
        for n, tier in enumerate(found[(plan, version, price_id)].tiers or [], start=1):
            rows.append((price_row, n, str(tier.start), None if tier.up_to is None else str(tier.up_to)))
    return pl.DataFrame(
        rows,
        schema={"price_row": pl.UInt32, "tier": pl.UInt32, "tier_from": pl.String, "tier_to": pl.String},
        orient="row",
    )


@dataclass(frozen=True)
class Chunk:
    """The invoices of some drafts.

    ``invoices``: ``id``, ``subscription``, ``order``, ``period_start``, ``json`` and the columns of the invoices
    export; ``lines``: the export's line rows.
    """

    invoices: pl.DataFrame
    lines: pl.DataFrame
    #: The subscriptions of drafts these texts cannot write exactly (see :class:`NotPlain`): none written here.
    refused: tuple[str, ...] = ()


class Batch:
    """The plain subscriptions' drafts, rated; written a chunk of drafts at a time (their text is most of the memory).

    ``fees`` and ``usage``: the service periods covered, as ``(min start, max end)`` or None (a draft that turns out
    to have no line is counted: it covers its cycle all the same).
    """

    def __init__(
        self,
        tenant: str,
        drafts: pl.DataFrame,
        prices: pl.DataFrame,
        tiers: pl.DataFrame,
        charges: pl.DataFrame,
        rated: pl.DataFrame,
        details: pl.DataFrame,
        discounts: pl.DataFrame,
        fees: tuple[datetime, datetime] | None,
        usage: tuple[datetime, datetime] | None,
    ) -> None:
        self.tenant, self.drafts, self.prices, self.tiers, self.charges = tenant, drafts, prices, tiers, charges
        self.rated, self.details, self.discounts, self.fees, self.usage = rated, details, discounts, fees, usage

    def chunks(self, size: int | None = None) -> Iterator[Chunk]:
        """The invoices, ``size`` drafts at a time (:data:`CHUNK`), in the order of their ids."""
        size = size or CHUNK
        charge_draft = self.charges.get_column("draft")
        detail_charge = self.details.get_column("charge")
        for lo in range(0, self.drafts.height, size):
            hi = min(lo + size, self.drafts.height)
            c_lo, c_hi = (int(i) for i in charge_draft.search_sorted(pl.Series([lo, hi], dtype=pl.UInt32)))
            d_lo, d_hi = (int(i) for i in detail_charge.search_sorted(pl.Series([c_lo, c_hi], dtype=pl.UInt32)))
            drafts = self.drafts.slice(lo, hi - lo)
            try:
                with step("assembly"):
                    chunk = _chunk(
                        self.tenant,
                        drafts,
                        self.prices,
                        self.tiers,
                        self.charges.slice(c_lo, c_hi - c_lo),
                        self.rated.slice(c_lo, c_hi - c_lo),
                        self.details.slice(d_lo, d_hi - d_lo),
                        self.discounts,
                    )
            except NotPlain:
                empty = pl.DataFrame()
                chunk = Chunk(empty, empty, refused=tuple(drafts.get_column("id").unique().to_list()))
            yield chunk


def _span(frame: pl.DataFrame, start: str, end: str) -> tuple[datetime, datetime] | None:
    if frame.height == 0:
        return None
    # Datetime columns: polars types min() and max() for any column (a number, a string, a date...).
    return cast(datetime, frame.get_column(start).min()), cast(datetime, frame.get_column(end).max())


# ------------------------------------------------------------------------------------------------- cycles, segments


def _drafts(subs: pl.DataFrame, month: datetime, after: datetime) -> pl.DataFrame:
    """One row per (subscription, cycle starting in the month), with the cycle's in-advance and arrears segments."""
    subs = subs.with_columns(anchor_start=pl.when(pl.col("anchor") == "anniversary").then(pl.col("start")))
    keys = subs.select("timezone", "cycle", "anchor", "anchor_start").unique()
    rows: list[dict[str, Any]] = []
    for tz, cycle, anchor, anchor_start in keys.iter_rows():
        try:
            zone = ZoneInfo(tz)
        except Exception as e:  # noqa: BLE001 - the per-subscription path reports it for each subscription
            raise NotPlain(f"time zone {tz!r}") from e
        with trusted():
            sub = Subscription(
                id="?",
                customer="?",
                plan="?",
                version=1,
                start=anchor_start or month.replace(tzinfo=zone),
                cycle=cycle,
                anchor=anchor,
            )
        for period in cycles.cycles_between(sub, tz, month.replace(tzinfo=zone), after.replace(tzinfo=zone)):
            previous = cycles.previous_cycle(sub, tz, period)
            rows.append(
                {
                    "timezone": tz,
                    "cycle": cycle,
                    "anchor": anchor,
                    "anchor_start": anchor_start,
                    "p_start": period.start,
                    "p_end": period.end,
                    "q_start": previous.start,
                    "q_end": previous.end,
                    "label": f"{period.start.astimezone(zone):%Y-%m}",
                    "q_label": f"{previous.start.astimezone(zone):%Y-%m}",
                }
            )
    schema: dict[str, Any] = {
        "timezone": pl.String,
        "cycle": pl.String,
        "anchor": pl.String,
        "anchor_start": _UTC,
        "p_start": _UTC,
        "p_end": _UTC,
        "q_start": _UTC,
        "q_end": _UTC,
        "label": pl.String,
        "q_label": pl.String,
    }
    periods = pl.DataFrame(rows, schema=schema, orient="row")
    drafts = subs.join(periods, on=["timezone", "cycle", "anchor", "anchor_start"], how="inner", nulls_equal=True)
    # In the order of the invoices' ids (the store's order, which the export keeps), numbered in that order.
    drafts = drafts.with_columns(invoice=pl.concat_str("id", pl.lit("-"), pl.col("p_start").dt.strftime("%Y%m%d")))
    drafts = drafts.sort("invoice").with_row_index("draft")
    # The usage period billed in arrears: the previous cycle, unless the subscription started after it.
    arrears = pl.col("q_end") > pl.col("start")
    drafts = drafts.with_columns(
        a_start=pl.when(arrears).then("q_start"),
        a_end=pl.when(arrears).then("q_end"),
        a_label=pl.when(arrears).then("q_label"),
    )
    end = pl.col("end").fill_null(pl.col("p_end"))
    drafts = drafts.with_columns(
        in_lo=pl.max_horizontal("start", "p_start"),
        in_hi=pl.min_horizontal(end, "p_end"),
        ar_lo=pl.max_horizontal("start", "a_start"),
        ar_hi=pl.min_horizontal(pl.col("end").fill_null(pl.col("a_end")), "a_end"),
    )
    return _segments(_segments(drafts, "in", "p_start", "p_end"), "ar", "a_start", "a_end")


def _segments(drafts: pl.DataFrame, side: str, start: str, end: str) -> pl.DataFrame:
    """The segment of each draft's period ``[start, end)``: ``<side>_proration`` and ``<side>_reason`` (null: none)."""
    lo, hi = f"{side}_lo", f"{side}_hi"
    spans = (
        drafts.filter(pl.col(start).is_not_null() & (pl.col(lo) < pl.col(hi)))
        .select("timezone", start, end, lo, hi)
        .unique()
    )
    rows = []
    for tz, p_start, p_end, seg_lo, seg_hi in spans.iter_rows():
        with trusted():
            sub = Subscription(
                id="?", customer="?", plan="?", version=1, start=seg_lo, end=seg_hi if seg_hi < p_end else None
            )
        [seg] = cycles.segments(sub, tz, cycles.Period(p_start, p_end))
        assert (seg.start, seg.end) == (seg_lo, seg_hi)
        rows.append((tz, p_start, p_end, seg_lo, seg_hi, seg.proration, seg.reason))
    found = pl.DataFrame(
        rows,
        schema={
            "timezone": pl.String,
            start: _UTC,
            end: _UTC,
            lo: _UTC,
            hi: _UTC,
            f"{side}_proration": pl.Decimal(38, 9),
            f"{side}_reason": pl.String,
        },
        orient="row",
    )
    return drafts.join(found, on=["timezone", start, end, lo, hi], how="left", nulls_equal=True)


# ---------------------------------------------------------------------------------------------------------- charges


def _prices(snapshot: Snapshot) -> pl.DataFrame:
    """One row per (plan, version, price): what charges need of each price, its texts written once."""
    rows = []
    for (plan, version), prices in snapshot.prices.items():
        for pos, price in enumerate(prices):
            spec = snapshot.meters.get(price.meter) if price.meter is not None else None
            in_advance = price.model == "flat" and price.cadence == "in_advance"
            what = f"{price.meter or price.id} ({price.model})"
            event_type = repr(spec.event_type if spec else "?")
            rows.append(
                {
                    "plan": plan,
                    "version": version,
                    "pos": pos,
                    "price": price.id,
                    "model": price.model,
                    "meter": price.meter,
                    "flat": price.model == "flat",
                    "in_advance": in_advance,
                    "what": what,
                    "event_type": event_type,
                    "price_json": _json(price.id),
                    "price_inner": _json(price.id)[1:-1],
                    "what_inner": _json(what)[1:-1],
                    "meter_json": _json(price.meter),
                    "model_json": _json(price.model),
                    "event_type_inner": _json(event_type)[1:-1],
                    "dimensions": price.matrix.dimensions if price.matrix else None,
                    "per_event": price.percentage is not None and price.percentage.per == "event",
                }
            )
    schema: dict[str, Any] = {
        "plan": pl.String,
        "version": pl.Int64,
        "pos": pl.UInt32,
        "price": pl.String,
        "model": pl.String,
        "meter": pl.String,
        "flat": pl.Boolean,
        "in_advance": pl.Boolean,
        "what": pl.String,
        "event_type": pl.String,
        "price_json": pl.String,
        "price_inner": pl.String,
        "what_inner": pl.String,
        "meter_json": pl.String,
        "model_json": pl.String,
        "event_type_inner": pl.String,
        "dimensions": pl.List(pl.String),
        "per_event": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema, orient="row").with_row_index("price_row")


def _json(value: str | None) -> str:
    return msgspec.json.encode(value).decode()


def _charges(drafts: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    """One row per charge, in the order of the invoices' lines.

    Columns: ``charge`` (its row), ``draft``, ``price_row``, ``section`` (0: in advance, 1: in arrears), the segment,
    its cycle and proration.
    """
    keys = prices.select("plan", "version", "pos", "price_row", "in_advance", "flat")
    advance = (
        drafts.filter(pl.col("in_proration").is_not_null())
        .select(
            "draft",
            "plan",
            "version",
            c_start="p_start",
            c_end="p_end",
            s_start="in_lo",
            s_end="in_hi",
            proration="in_proration",
        )
        .join(keys.filter("in_advance"), on=["plan", "version"])
        .with_columns(section=pl.lit(0, pl.UInt8))
    )
    arrears = (
        drafts.filter(pl.col("ar_proration").is_not_null())
        .select(
            "draft",
            "plan",
            "version",
            c_start="a_start",
            c_end="a_end",
            s_start="ar_lo",
            s_end="ar_hi",
            proration="ar_proration",
        )
        .join(keys.filter(~pl.col("in_advance")), on=["plan", "version"])
        .with_columns(
            section=pl.lit(1, pl.UInt8),
            proration=pl.when("flat").then("proration").otherwise(pl.lit(Decimal(1), pl.Decimal(38, 9))),
        )
    )
    charges = pl.concat([advance, arrears]).sort("draft", "section", "pos")
    return charges.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("charge"),
        "draft",
        "price_row",
        "section",
        "c_start",
        "c_end",
        "s_start",
        "s_end",
        "proration",
    )


# ----------------------------------------------------------------------------------------------------------- rating


def _rate(
    snapshot: Snapshot, out: Path, charges: pl.DataFrame, drafts: pl.DataFrame, prices: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rated lines (one per charge, in charge order) and their details (sorted by charge).

    Rated :data:`RATE_SLICE` charges at a time: rating's intermediate columns are the peak of a run's memory, and a
    slice's cost only a pass over the period's usage files.
    """
    found = {(plan, version, price.id): price for (plan, version), every in snapshot.prices.items() for price in every}
    used = prices.join(charges.select("price_row").unique(), on="price_row")
    with trusted():  # rating's own keys as ids (short: one per charge), as the per-subscription path does
        objects = [
            msgspec.structs.replace(found[(plan, version, price_id)], id=f"p{row}")
            for row, plan, version, price_id in used.select("price_row", "plan", "version", "price").iter_rows()
        ]
    table = price_frame(objects)
    attributes = prices.select("price_row", "meter", "dimensions", "per_event")
    aggregations = {slug: spec.aggregation for slug, spec in snapshot.meters.items()}
    lines, details = [], []
    for start in range(0, charges.height, RATE_SLICE):
        part = charges.slice(start, RATE_SLICE)
        usage = (
            part.select("charge", "draft", "price_row", "s_start", "s_end")
            .join(attributes.filter(pl.col("meter").is_not_null()), on="price_row", maintain_order="left")
            .join(drafts.select("draft", "customer"), on="draft", maintain_order="left")
        )
        requests = usage.select(
            charge=pl.col("charge").cast(pl.Int64),
            customer="customer",
            meter="meter",
            dimensions="dimensions",
            **{"from": "s_start", "to": "s_end"},
        )
        per_event = usage.get_column("per_event")
        del usage
        try:
            with step("quantities"):
                quantities = period_quantities(out, snapshot.tenant, requests.filter(~per_event), aggregations)
                amounts = event_amounts(out, snapshot.tenant, requests.filter(per_event), snapshot.meters)
            del requests
            with step("rating"):
                result = rate(
                    part.select(
                        charge=pl.col("charge").cast(pl.Int64),
                        price_id=pl.format("p{}", pl.col("price_row")),
                        proration="proration",
                    ),
                    table,
                    quantities.select("charge", "quantity", "combination"),
                    amounts,
                )
        except MeterError as e:
            # Rating names the charge it refuses (`charge 123`): its subscription is left to the other path.
            named = re.search(r"\bcharge (\d+)\b", e.message)
            if named is None or int(named[1]) >= charges.height:
                raise
            draft = charges.get_column("draft")[int(named[1])]
            raise Refused(drafts.get_column("id")[draft], e) from e
        del quantities, amounts
        with step("assembly"):
            lines.append(
                result.lines.select(
                    "currency", "amount", "quantity", "subtotal", "amount_exact", "minimum_applied", "maximum_applied"
                )
            )
            found_details = result.details.with_columns(pl.col("charge").cast(pl.UInt32)).with_row_index("seq")
            details.append(found_details.sort("charge", "seq").drop("seq"))
        del result
    return pl.concat(lines), pl.concat(details)


# ------------------------------------------------------------------------------------------------------ the texts


def _by_value(frame: pl.DataFrame, column: str, texts: dict[str, pl.Expr]) -> pl.DataFrame:
    """``frame`` with ``texts`` of ``column`` computed once per distinct value (times, prices: few of them)."""
    distinct = frame.select(pl.col(column).unique()).with_columns(**texts)
    return frame.join(distinct, on=column, how="left", nulls_equal=True, maintain_order="left")


def _normalized(frame: pl.DataFrame, column: str, scale: int) -> pl.DataFrame:
    """``frame`` with ``<column>_str``, ``_plain`` and ``_long`` (see :func:`with_normalized`), per distinct value."""
    distinct = frame.select(pl.col(column).unique())
    distinct = with_normalized(distinct, pl.col(column).to_physical(), scale, column)
    return frame.join(distinct, on=column, how="left", nulls_equal=True, maintain_order="left")


def _detail_texts(
    details: pl.DataFrame, charges: pl.DataFrame, rated: pl.DataFrame, tiers: pl.DataFrame
) -> pl.DataFrame:
    """Per charge with details, their JSON: ``details`` as stored, ``details_plain`` with plain decimals."""
    if details.get_column("tier").is_not_null().any():
        d = details.join(charges.select("charge", "price_row"), on="charge", maintain_order="left")
        d = d.join(tiers, on=["price_row", "tier"], how="left", maintain_order="left")
    else:
        d = details.with_columns(tier_from=pl.lit(None, pl.String), tier_to=pl.lit(None, pl.String))
    d = _by_value(d, "combination", {"combination_json": json_string(pl.col("combination"))})
    for name, scale in (("units", 9), ("unit_price", 11), ("subtotal", 20), ("flat_fee", 9), ("free_units", 9)):
        d = _normalized(d, name, scale)
    if d.height and d.select(pl.any_horizontal(pl.col("^.*_long$")).any()).item():
        raise NotPlain("a detail has more than 28 digits")

    def text(form: str) -> pl.Expr:
        def number(name: str) -> pl.Expr:
            return pl.col(f"{name}_{form}").fill_null(pl.lit("0"))

        def optional(name: str, value: pl.Expr, quoted: bool = True) -> pl.Expr:
            shown = pl.concat_str(pl.lit('"'), value, pl.lit('"')) if quoted else value
            return pl.when(value.is_not_null()).then(pl.concat_str(pl.lit(f',"{name}":'), shown)).otherwise(pl.lit(""))

        def count(name: str) -> pl.Expr:
            return optional(name, pl.when(pl.col(name) > 0).then(pl.col(name).cast(pl.String)), quoted=False)

        return pl.concat_str(
            pl.lit('{"component":"'),
            pl.col("component").cast(pl.String),
            pl.lit('","units":"'),
            number("units"),
            pl.lit('","unit_price":"'),
            number("unit_price"),
            pl.lit('","subtotal":"'),
            number("subtotal"),
            pl.lit('"'),
            optional("tier", pl.col("tier").cast(pl.String), quoted=False),
            optional("tier_from", pl.col("tier_from")),
            optional("tier_to", pl.col("tier_to")),
            pl.when(pl.col("combination").is_not_null())
            .then(pl.concat_str(pl.lit(',"combination":'), "combination_json"))
            .otherwise(pl.lit("")),
            optional("flat_fee", pl.col(f"flat_fee_{form}")),
            optional("free_units", pl.col(f"free_units_{form}")),
            count("raised_to_min_fee"),
            count("cut_to_max_fee"),
            pl.lit("}"),
        )

    # Plain and stored texts differ only where a decimal is in exponent notation: the plain one is written for those.
    exponent = pl.any_horizontal(
        pl.col(f"{n}_str").str.contains("E").fill_null(False)
        for n in ("units", "unit_price", "subtotal", "flat_fee", "free_units")
    )
    d = d.with_columns(json=text("str"), odd=exponent).with_row_index("_i")
    odd = d.filter("odd").select("_i", plain=text("plain"))
    rows = (
        d.select("_i", "charge", "json")
        .join(odd, on="_i", how="left", maintain_order="left")
        .select("charge", "json", plain=pl.coalesce("plain", "json"))
    )
    # The step up to the minimum or down to the maximum: a detail of its own, last.
    bounded = rated.with_columns(charge=charges.get_column("charge")).filter(
        pl.col("minimum_applied") | pl.col("maximum_applied")
    )
    if bounded.height:
        bounded = with_normalized(
            bounded, pl.col("amount_exact").to_physical() - pl.col("subtotal").to_physical(), 20, "step"
        )
        if bounded.get_column("step_long").any():
            raise NotPlain("a step to a bound has more than 28 digits")

        def step_text(column: str) -> pl.Expr:
            value = pl.col(column)
            return pl.concat_str(
                pl.lit('{"component":"'),
                pl.when("minimum_applied").then(pl.lit("minimum")).otherwise(pl.lit("maximum")),
                pl.lit('","units":"1","unit_price":"'),
                value,
                pl.lit('","subtotal":"'),
                value,
                pl.lit('"}'),
            )

        steps = bounded.select("charge", json=step_text("step_str"), plain=step_text("step_plain"))
        rows = pl.concat([rows.with_columns(last=pl.lit(False)), steps.with_columns(last=pl.lit(True))])
        rows = rows.sort("charge", "last", maintain_order=True).drop("last")
    # Most charges have one detail: only those with several are grouped (joining texts costs a copy of each).
    charge = pl.col("charge")  # sorted: a charge's rows are adjacent
    several = ((charge == charge.shift(1)) | (charge == charge.shift(-1))).fill_null(False)
    rows = rows.with_columns(several=several)
    single = rows.filter(~pl.col("several")).select("charge", details="json", details_plain="plain")
    grouped = (
        rows.filter("several")
        .set_sorted("charge")
        .group_by("charge", maintain_order=True)
        .agg(details=pl.col("json").str.join(","), details_plain=pl.col("plain").str.join(","))
    )
    return pl.concat([single, grouped])


def _chunk(
    tenant: str,
    drafts: pl.DataFrame,
    prices: pl.DataFrame,
    tiers: pl.DataFrame,
    charges: pl.DataFrame,
    rated: pl.DataFrame,
    details: pl.DataFrame,
    discounts: pl.DataFrame,
) -> Chunk:
    texts = _detail_texts(details, charges, rated, tiers)
    lines = _lines(tenant, drafts, prices, charges, rated, texts)
    found = _discount_lines(discounts.join(drafts.select("id"), on="id", how="semi"), drafts, lines)
    if found.height:
        lines = pl.concat([lines, found], how="diagonal_relaxed").sort("draft", "position")
    invoices = _invoices(tenant, drafts, lines)
    return Chunk(invoices=invoices.drop("draft"), lines=_export_lines(lines, invoices))


def _lines(
    tenant: str,
    drafts: pl.DataFrame,
    prices: pl.DataFrame,
    charges: pl.DataFrame,
    rated: pl.DataFrame,
    texts: pl.DataFrame,
) -> pl.DataFrame:
    """One row per line: its JSON and what the invoice and the export need."""
    lines = pl.concat([charges, rated], how="horizontal")
    if not (
        lines.get_column("currency")
        == lines.join(drafts.select("draft", "currency"), on="draft", maintain_order="left").get_column(
            "currency_right"
        )
    ).all():
        raise NotPlain("a price is not in its customer's currency")  # rounded to the customer's one, one by one
    lines = (
        lines.drop("currency")
        .join(
            drafts.select("draft", "id", "customer", "version", "currency", "in_reason", "ar_reason"),
            on="draft",
            maintain_order="left",
        )
        .join(
            prices.select(
                "price_row",
                "price",
                "price_json",
                "price_inner",
                "what",
                "what_inner",
                "model",
                "model_json",
                "meter",
                "meter_json",
                "event_type",
                "event_type_inner",
                "flat",
                "in_advance",
            ),
            on="price_row",
            maintain_order="left",
        )
    )
    lines = lines.join(texts, on="charge", how="left", maintain_order="left")
    digits = minor_units_expr(pl.col("currency"))
    lines = lines.with_columns(digits=digits)
    lines = lines.with_columns(
        minor=pl.col("amount").to_physical()
        // pl.lit(10, pl.Int128).pow(MAX_MINOR_UNITS - pl.col("digits").cast(pl.Int32))
    )
    lines = _normalized(lines, "quantity", 9)
    if lines.get_column("quantity_long").any():
        raise NotPlain("a quantity has more than 28 digits")
    for column in ("s_start", "s_end", "c_start", "c_end"):
        lines = _by_value(
            lines, column, {f"{column}_iso": iso_text(pl.col(column)), f"{column}_time": time_text(pl.col(column))}
        )
    note = (
        pl.when(pl.col("section") == 0)
        .then(pl.lit("; in advance"))
        .when(pl.col("flat"))
        .then(pl.lit("; in arrears"))
        .otherwise(pl.lit(""))
    )
    reason = pl.when(pl.col("section") == 0).then("in_reason").otherwise("ar_reason")
    reason = pl.when(reason != "").then(pl.concat_str(pl.lit("; "), reason)).otherwise(pl.lit(""))
    kind = pl.when(pl.col("flat")).then(pl.lit("recurring")).otherwise(pl.lit("usage"))
    timing = pl.when(pl.col("in_advance")).then(pl.lit("in_advance")).otherwise(pl.lit("in_arrears"))
    version = pl.col("version").cast(pl.String)

    def key(price: str) -> pl.Expr:
        return charge_key_expr(pl.col("id"), pl.col(price), version, pl.col("c_start_iso"), pl.col("c_end_iso"))

    def events(event_type: str) -> pl.Expr:
        return pl.when(pl.col("meter").is_not_null()).then(
            pl.concat_str(
                pl.lit(f"{events_cited(tenant)}: type = "),
                event_type,
                pl.lit(", subject = '"),
                "customer",
                pl.lit("', time in ["),
                "s_start_iso",
                pl.lit(", "),
                "s_end_iso",
                pl.lit(")"),
            )
        )

    lines = lines.with_columns(
        money=fixed_text(pl.col("minor"), pl.col("digits")), kind=kind, timing=timing, reason_text=reason, note=note
    )
    tenant_inner = _json(f"{events_cited(tenant)}: type = ")[1:-1]
    events_json = (
        pl.when(pl.col("meter").is_not_null())
        .then(
            pl.concat_str(
                pl.lit('"' + tenant_inner),
                "event_type_inner",
                pl.lit(", subject = '"),
                "customer",
                pl.lit("', time in ["),
                "s_start_iso",
                pl.lit(", "),
                "s_end_iso",
                pl.lit(')"'),
            )
        )
        .otherwise(pl.lit("null"))
    )
    quantity = (
        pl.when(pl.col("quantity").is_null())
        .then(pl.lit("null"))
        .otherwise(pl.concat_str(pl.lit('"'), "quantity_str", pl.lit('"')))
    )
    json = pl.concat_str(
        pl.lit('{"kind":"'),
        "kind",
        pl.lit('","description":"'),
        "what_inner",
        "note",
        "reason_text",
        pl.lit('","amount":"'),
        "money",
        pl.lit('","period_start":"'),
        "s_start_time",
        pl.lit('","period_end":"'),
        "s_end_time",
        pl.lit('","key":"'),
        key("price_inner"),
        pl.lit('","price":'),
        "price_json",
        pl.lit(',"version":'),
        version,
        pl.lit(',"timing":"'),
        "timing",
        pl.lit('","model":'),
        "model_json",
        pl.lit(',"meter":'),
        "meter_json",
        pl.lit(',"quantity":'),
        quantity,
        pl.lit(',"rated":"'),
        "money",
        pl.lit('","billed":null,"billed_quantity":null,"corrects":[],"details":['),
        pl.col("details").fill_null(""),
        pl.lit('],"events":'),
        events_json,
        pl.lit(',"grant":null}'),
    )
    return lines.with_columns(
        json=json,
        position=pl.col("charge").cast(pl.UInt64),
        rated=pl.lit(True),
        description=pl.concat_str("what", "note", "reason_text"),
        key=key("price"),
        events=events("event_type"),
        quantity_value=pl.col("quantity"),
    ).select(
        "draft",
        "position",
        "json",
        "minor",
        "digits",
        "kind",
        "description",
        "s_start",
        "s_end",
        "key",
        "price",
        "version",
        "model",
        "meter",
        "quantity_value",
        "rated",
        "details_plain",
        "events",
        "timing",
    )


def _discount_lines(subs: pl.DataFrame, drafts: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    """The discount lines of the drafts, after their billing lines (see ``invoicing._discount_lines``).

    Discounts active at the cycle's start, on one price's lines first, then on the invoice, each in the order the
    subscription lists them. An invoice discount's base includes the discounts before it, so they are taken one
    rank at a time; a base of 0 or less takes nothing.
    """
    discounted = subs.filter(pl.col("discounts") != "[]")
    if discounted.height == 0:
        return pl.DataFrame()
    terms = _discount_rows(discounted.select("id", "currency", "discounts"))
    texts = {t for t in terms.get_column("d_start").to_list() + terms.get_column("d_end").to_list() if t}
    times = {t: datetime.fromisoformat(t).astimezone(UTC) for t in texts}
    when = {name: pl.col(name).replace_strict(times, default=None, return_dtype=_UTC) for name in ("d_start", "d_end")}
    terms = terms.with_columns(**when)
    active = (
        drafts.select("draft", "id", "p_start", "p_end")
        .join(terms.drop("currency"), on="id")
        .filter(
            (pl.col("d_start") <= pl.col("p_start"))
            & (pl.col("d_end").is_null() | (pl.col("p_start") < pl.col("d_end")))
        )
        .sort("draft", pl.col("d_price").is_null(), "n")
    )
    if active.height == 0:
        return pl.DataFrame()
    per_draft = lines.group_by("draft").agg(everything=pl.col("minor").sum(), digits=pl.col("digits").first())
    per_price = lines.group_by("draft", "price").agg(of_price=pl.col("minor").sum())
    active = (
        active.join(per_draft, on="draft", how="inner")
        .join(per_price, left_on=["draft", "d_price"], right_on=["draft", "price"], how="left")
        .with_columns(
            rank=pl.int_range(pl.len(), dtype=pl.UInt32).over("draft"),
            pct=pl.col("percent").cast(pl.Decimal(38, 9)).to_physical(),
            fixed=pl.col("amount").cast(pl.Decimal(38, MAX_MINOR_UNITS)).to_physical()
            // pl.lit(10, pl.Int128).pow(MAX_MINOR_UNITS - pl.col("digits").cast(pl.Int32)),
        )
    )
    if active.height == 0:
        return pl.DataFrame()
    taken = pl.DataFrame(schema={"draft": pl.UInt32, "taken": pl.Int128})
    found = []
    for rank in range(int(cast(int, active.get_column("rank").max())) + 1):
        rows = active.filter(pl.col("rank") == rank).join(taken, on="draft", how="left")
        base = (
            pl.when(pl.col("d_price").is_null())
            .then(pl.col("everything") + pl.col("taken").fill_null(0))
            .otherwise(pl.col("of_price").fill_null(0))
        )
        rows = rows.with_columns(base=base).filter(pl.col("base") > 0)
        # percent / 100 of the base, rounded half to even to the minor unit: base (10^-digits) x pct (10^-9) counts
        # 10^-(digits + 11).
        product, unit = pl.col("base") * pl.col("pct"), pl.lit(10**11, pl.Int128)
        rounded = divide_half_even(product, unit)
        off = pl.when(pl.col("percent").is_not_null()).then(rounded).otherwise(pl.min_horizontal("fixed", "base"))
        rows = rows.with_columns(off=off)
        found.append(rows)
        taken = pl.concat([taken, rows.select("draft", taken=pl.lit(0, pl.Int128) - pl.col("off"))])
        taken = taken.group_by("draft").agg(pl.col("taken").sum())
    rows = pl.concat(found)
    what = (
        pl.when(pl.col("percent").is_not_null())
        .then(pl.concat_str("percent", pl.lit("% off")))
        .otherwise(pl.concat_str("amount", pl.lit(" off")))
    )
    on = (
        pl.when(pl.col("d_price").is_not_null())
        .then(pl.concat_str(pl.lit("price "), "d_price"))
        .otherwise(pl.lit("the invoice"))
    )
    description = pl.concat_str(
        pl.lit("discount "),
        "d_id",
        pl.lit(": "),
        what,
        pl.lit(" "),
        on,
        pl.lit(" (of "),
        fixed_text(pl.col("base"), pl.col("digits")),
        pl.lit(")"),
    )
    rows = rows.with_columns(
        description=description, money=pl.concat_str(pl.lit("-"), fixed_text(pl.col("off"), pl.col("digits")))
    )
    json = pl.concat_str(
        pl.lit('{"kind":"discount","description":'),
        json_string(pl.col("description")),
        pl.lit(',"amount":"'),
        pl.col("money"),
        pl.lit('","period_start":"'),
        time_text(pl.col("p_start")),
        pl.lit('","period_end":"'),
        time_text(pl.col("p_end")),
        pl.lit('","key":null,"price":'),
        json_string(pl.col("d_price")),
        pl.lit(
            ',"version":null,"timing":null,"model":null,"meter":null,"quantity":null,"rated":null,"billed":null,'
            '"billed_quantity":null,"corrects":[],"details":[],"events":null,"grant":null}'
        ),
    )
    return rows.sort("draft", "rank").select(
        "draft",
        "digits",
        "description",
        position=pl.lit(1 << 40, pl.UInt64) + pl.col("rank").cast(pl.UInt64),
        kind=pl.lit("discount"),
        minor=pl.lit(0, pl.Int128) - pl.col("off"),
        json=json,
        s_start="p_start",
        s_end="p_end",
        price="d_price",
        rated=pl.lit(False),
    )


def _invoices(tenant: str, drafts: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    per_draft = lines.group_by("draft", maintain_order=True).agg(
        lines=pl.col("json").str.join(","), minor=pl.col("minor").sum(), digits=pl.col("digits").first()
    )
    per_draft = per_draft.set_sorted("draft")
    invoices = drafts.join(per_draft, on="draft", how="inner", maintain_order="left")
    invoices = invoices.with_columns(total_text=fixed_text(pl.col("minor"), pl.col("digits")))
    for column in ("p_start", "p_end", "a_start", "a_end"):
        invoices = _by_value(invoices, column, {f"{column}_time": time_text(pl.col(column))})

    def optional_time(name: str) -> pl.Expr:
        return (
            pl.when(pl.col(name).is_null())
            .then(pl.lit("null"))
            .otherwise(pl.concat_str(pl.lit('"'), pl.col(f"{name}_time"), pl.lit('"')))
        )

    json = pl.concat_str(
        pl.lit('{"id":"'),
        "invoice",
        pl.lit(f'","tenant":{_json(tenant)},"customer":"'),
        "customer",
        pl.lit('","subscription":"'),
        "id",
        pl.lit('","currency":"'),
        "currency",
        pl.lit('","reason":"cycle","period_start":"'),
        "p_start_time",
        pl.lit('","period_end":"'),
        "p_end_time",
        pl.lit('","issued_at":"'),
        "p_start_time",
        pl.lit('","lines":['),
        pl.col("lines"),
        pl.lit('],"subtotal":"'),
        pl.col("total_text"),
        pl.lit('","total":"'),
        pl.col("total_text"),
        pl.lit('","status":"draft","number":null,"finalized_at":null,"voided_at":null,"period":'),
        pl.concat_str(pl.lit('"'), "label", pl.lit('"')),
        pl.lit(',"usage_start":'),
        optional_time("a_start"),
        pl.lit(',"usage_end":'),
        optional_time("a_end"),
        pl.lit(',"usage_period":'),
        pl.when(pl.col("a_label").is_null())
        .then(pl.lit("null"))
        .otherwise(pl.concat_str(pl.lit('"'), "a_label", pl.lit('"'))),
        pl.lit(_DRAFT_END),
    )
    total = _money_decimal(pl.col("minor"), pl.col("digits"))
    return invoices.select(
        "draft",
        id="invoice",
        subscription="id",
        order="order",
        json=json,
        number=pl.lit(None, pl.String),
        status=pl.lit("draft"),
        tenant=pl.lit(tenant),
        customer="customer",
        currency="currency",
        reason=pl.lit("cycle"),
        period_start="p_start",
        period_end="p_end",
        issued_at="p_start",
        subtotal=total,
        total=total,
        finalized_at=pl.lit(None, _UTC),
        voided_at=pl.lit(None, _UTC),
        period="label",
        usage_start="a_start",
        usage_end="a_end",
        usage_period="a_label",
        reissues=pl.lit(None, pl.String),
    )


def _money_decimal(minor: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """An Int128 count of ``10^-digits`` as the export's ``Decimal(38, 9)``."""
    widen = pl.lit(10, pl.Int128).pow(9 - digits.cast(pl.Int32))
    return (minor * widen).cast(pl.Decimal(38, 0)) * pl.lit(Decimal("1E-9"), pl.Decimal(38, 9))


def _export_lines(lines: pl.DataFrame, invoices: pl.DataFrame) -> pl.DataFrame:
    """The invoices export's rows of the lines (the columns of :data:`meter.lake.invoices.LINE_SCHEMA`)."""
    lines = lines.join(invoices.select("draft", invoice="id"), on="draft", how="inner", maintain_order="left")
    return lines.select(
        "invoice",
        number=pl.lit(None, pl.String),
        line=(pl.int_range(pl.len(), dtype=pl.Int32).over("draft") + 1),
        kind="kind",
        description="description",
        amount=_money_decimal(pl.col("minor"), pl.col("digits")),
        period_start="s_start",
        period_end="s_end",
        key="key",
        price="price",
        version=pl.col("version").cast(pl.Int32),
        model="model",
        meter="meter",
        quantity=pl.col("quantity_value").cast(pl.Decimal(38, 9)),
        rated=pl.when("rated").then(_money_decimal(pl.col("minor"), pl.col("digits"))),
        details=pl.concat_str(pl.lit("["), pl.col("details_plain").fill_null(""), pl.lit("]")),
        events="events",
        grant=pl.lit(None, pl.String),
        timing="timing",
        billed=pl.lit(None, pl.Decimal(38, 9)),
        billed_quantity=pl.lit(None, pl.Decimal(38, 9)),
        corrects=pl.lit(None, pl.String),
    )
