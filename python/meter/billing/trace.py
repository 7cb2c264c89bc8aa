"""The events behind an invoice line: what a customer disputing a charge is shown.

A usage line bills a meter's usage of one customer over its service period ``[period_start, period_end)`` (event
time). Its events are the customer's accepted events of the meter's type in that period that the meter counts (its
filters hold and it can read the value): found by :func:`meter.lake.events.search`, each with the value the meter
reads from it (the engine's own extraction, :func:`meter.engine.event_values`). Aggregated as the meter aggregates
(a matrix price: per combination of its dimensions, then added up), they give the line's quantity.

The events listed are those accepted when the list is asked for: an event of the period accepted after the invoice
was made is listed too (the next invoice bills it as a prior-period adjustment).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from meter.billing.invoices import Invoice, InvoiceLine
from meter.engine import Engine, event_values
from meter.exceptions import InvalidInput, NotFound
from meter.lake import events as lake_events

__all__ = ["line_events", "usage_line"]


def usage_line(invoice: Invoice, n: int) -> InvoiceLine:
    """Line ``n`` (from 1) of ``invoice``, which must bill a meter's usage."""
    if not 1 <= n <= len(invoice.lines):
        raise NotFound(f"invoice {invoice.id} has lines 1 to {len(invoice.lines)}; there is no line {n}")
    line = invoice.lines[n - 1]
    if line.meter is None:
        raise InvalidInput(
            f"line {n} of invoice {invoice.id} bills no usage ({line.kind}: {line.description}): only a usage line has "
            "events behind it",
            code="not_a_usage_line",
        )
    return line


def line_events(
    engine: Engine,
    out: Path,
    tenant: str,
    invoice: Invoice,
    n: int,
    after: tuple[int, int] = (0, -1),
    limit: int = 100,
) -> tuple[pl.DataFrame, tuple[int, int] | None]:
    """The events behind line ``n`` in the order they were accepted (a page of at most ``limit``, and the next).

    Columns: the search's (:data:`meter.lake.events.EVENT_COLUMNS`) and ``value``, what the meter reads of each.
    """
    line = usage_line(invoice, n)
    assert line.meter is not None
    meter = engine.get_meter(tenant, line.meter)
    spec = meter.spec()
    what = lake_events.Search(
        subjects=(invoice.customer,), types=(meter.event_type,), start=line.period_start, end=line.period_end
    )
    kept: list[pl.DataFrame] = []
    cursor: tuple[int, int] | None = after
    while cursor is not None and sum(k.height for k in kept) < limit:
        page, cursor = lake_events.search(engine, out, tenant, what, cursor, limit)
        values = event_values(spec, page.get_column("data").to_arrow().cast(pa.string()))
        counted = page.with_columns(value=pl.Series(values.to_pylist(), dtype=pl.Decimal(38, 9))).drop_nulls("value")
        kept.append(counted)
    events = pl.concat(kept) if kept else pl.DataFrame()
    if events.height > limit:
        events = events.head(limit)
        return events, (int(events["seq"][-1]), int(events["ordinal"][-1]))
    return events, cursor
