"""A period's usage per charge, read from the usage Parquet export: the ``quantities`` that :func:`rate` takes.

Pricing never reads RocksDB. It reads what :func:`meter.lake.usage.export_usage` writes, through
:func:`meter.lake.usage.scan`: one file per meter and UTC day, one row per customer, minute and
combination of the meter's dimensions (``customer``, one column per dimension, ``window_start``, ``window_end``,
``value`` decimal128(38, 9), ``events``). Each meter is scanned once with hive partitioning and a predicate on
``date``, so a month's invoice opens only that month's days (partition pruning); files whose names start with ``.`` or
``_`` (a crash's ``.part-0.parquet.tmp``, ``_exported.json``) are never read.

:func:`period_quantities` is vectorised: one lazy plan per meter (and list of dimensions) joins the usage rows to the
charges on ``customer``, keeps the minutes inside each charge's ``[from, to)``, and folds them per charge; polars'
streaming engine runs the plans one after the other (each already uses every core: run together they took as long and
half as much memory again). No Python code runs per charge or per row.

How a period folds a meter's minutes (the catalog's ``aggregation``; :func:`meter_aggregations` reads it):

- ``sum``, ``count``: the sum of the minutes' values (a count meter's value is its minute's count), exact.
- ``min``, ``max``: the smallest or largest minute value, exact.
- ``latest``: the value of the latest minute. The export keeps one value per minute and combination, not the time of
  the event behind it: when a charge adds several combinations together (it asks for fewer dimensions than the
  meter has) and they hold *different* values in the latest minute, which came last is unknown, and the charge is
  refused (``ambiguous_latest``) rather than priced at a guess. Asking for the meter's dimensions removes the doubt.
- ``avg``: the events' mean over the period, ``Σ(value × events) / Σ events``, rounded half to even at the 9th
  decimal as the engine rounds. The export holds each minute's mean already rounded to 9 decimals, not its sum, so
  this is the *exact* weighted mean of the exported means: it equals the engine's period average whenever every
  minute's mean is exact at 9 decimals (for instance when the minute's sum divides by its events), and otherwise
  differs from it by at most 10^-9 (each minute's rounding moves the weighted mean by at most half of that, the final
  rounding by the other half). An exact period average needs the minutes' sums in the export.
- ``unique_count``: refused (``unsupported_meter``). The export keeps each minute's number of distinct values, and
  those do not add up to the period's: a value seen in two minutes would be counted twice, and the values themselves
  are not exported. Price a ``count`` or ``sum`` meter instead, or export the distinct values.

Not for flat fees (no meter). Percentages charged per event need one amount per event, which minutes cannot give:
:func:`event_amounts` reads those from the raw events export.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl
import pyarrow as pa

from meter.engine import event_values
from meter.exceptions import InvalidInput, ValueOverflow
from meter.lake import catalog as lake_catalog
from meter.lake import events as lake_events
from meter.lake import layout
from meter.lake import usage as lake_usage
from meter.pricing.charges import combination_expr
from meter.pricing.errors import fail
from meter.pricing.exact import DECIMAL_PLACES, from_scaled, out_of_range, shadow
from meter.pricing.money import divide_half_even
from meter.pricing.schema import DECIMAL
from meter.schemas import MeterSpec

__all__ = ["AGGREGATIONS", "QUANTITIES_SCHEMA", "event_amounts", "meter_aggregations", "period_quantities"]

#: The aggregations a meter can have; all but ``unique_count`` fold over a period from the export.
AGGREGATIONS = frozenset({"sum", "count", "min", "max", "unique_count", "latest", "avg"})
#: What :func:`period_quantities` returns, ``charge`` being typed as the requests' key.
QUANTITIES_SCHEMA: dict[str, pl.DataType] = {
    "charge": pl.String(),
    "combination": pl.String(),
    "quantity": DECIMAL,
    "events": pl.UInt64(),
}

_MINUTE_US = 60_000_000
_UTC = pl.Datetime("us", "UTC")


def meter_aggregations(out_dir: str | Path, tenant: str) -> dict[str, str]:
    """Each meter's aggregation (slug -> ``sum``, ``avg``...), from the catalog snapshot ``meters.parquet``."""
    frame = lake_catalog.read_meters(Path(out_dir), tenant, columns=["slug", "aggregation"])
    if frame is None:
        raise InvalidInput(
            f"no meters in the export for tenant {tenant!r}: {layout.catalog_file(Path(out_dir), tenant, 'meters')} "
            "is missing; run the catalog export first, or pass meters={slug: aggregation}",
            code="unknown_meter",
        )
    return dict(zip(frame.get_column("slug").to_list(), frame.get_column("aggregation").to_list(), strict=True))


def period_quantities(
    out_dir: str | Path, tenant: str, requests: pl.DataFrame, meters: Mapping[str, str] | None = None
) -> pl.DataFrame:
    """The usage behind each charge of ``requests`` over its period, as rating's ``quantities`` frame.

    ``requests`` has one row per charge: ``charge`` (the key rating uses: String or an integer type, unique),
    ``customer`` (String), ``meter`` (slug), ``from`` and ``to`` (Datetime on whole minutes: the period is
    ``[from, to)``, naive values being UTC) and optionally ``dimensions`` (List(String)): for a matrix price, the
    dimensions it prices, whose combinations are then kept apart; null or empty for every other price.

    ``meters`` maps each slug to its aggregation; when None it is read from the export's catalog snapshot.

    Returns ``charge``, ``combination`` (String, see :func:`combination_expr`; null for a charge without dimensions),
    ``quantity`` (Decimal(38, 9)) and ``events`` (UInt64: the events counted in the charge's minutes, which the
    quantity was computed from), in no particular order. A charge without usage in its period has no row (rating
    takes it as 0); a matrix charge has one row per combination used.

    Raises ``InvalidInput``: malformed requests (``invalid_requests``), a meter not in ``meters``
    (``unknown_meter``), a dimension the meter does not have (``invalid_dimensions``), a ``unique_count`` meter
    (``unsupported_meter``), an ambiguous ``latest`` (``ambiguous_latest``); ``ValueOverflow`` when a sum leaves the
    range pricing computes exactly.
    """
    requests = _checked(requests)
    key_type = requests.schema["charge"]
    empty = pl.DataFrame(schema={**QUANTITIES_SCHEMA, "charge": key_type})
    if requests.height == 0:
        return empty
    if meters is None:
        meters = meter_aggregations(out_dir, tenant)
    _check_meters(requests, meters)

    plans: list[tuple[str, pl.LazyFrame]] = []
    # One plan per meter and list of dimensions; grouping the few distinct lists costs far less than any per-row
    # work on them (sorting or joining five million lists takes most of a second).
    groups = requests.with_row_index("_row").group_by("meter", "dimensions").agg(pl.col("_row"))
    columns = requests.select("charge", "customer", "from", "to")
    for (slug, dimensions), rows in zip(
        groups.select("meter", "dimensions").iter_rows(), groups.get_column("_row"), strict=True
    ):
        part = columns[rows]
        dims = _dimensions(dimensions, part)
        plan = _plan(out_dir, tenant, slug, meters[slug], part, dims)
        if plan is not None:
            plans.append((slug, plan))
    if not plans:
        return empty
    results = [_finish(plan.collect(engine="streaming"), slug, meters[slug]) for slug, plan in plans]
    return pl.concat([empty, *results], how="vertical")


def event_amounts(
    out_dir: str | Path, tenant: str, requests: pl.DataFrame, meters: Mapping[str, MeterSpec]
) -> pl.DataFrame:
    """Each event's amount behind each charge of ``requests`` (same columns as for :func:`period_quantities`).

    What rating's ``event_amounts`` takes for a percentage with fees bounded per event, which minutes cannot give.

    Read from the raw events export (:func:`meter.lake.events.scan`, only the days the charges cover), and
    evaluated by the engine's own extraction (:func:`meter.engine.event_values`): the meter's filters and value path,
    so the events counted here are exactly those its usage counts. Returns ``charge`` and ``amount``
    (Decimal(38, 9)), one row per event.
    """
    empty = pl.DataFrame(schema={"charge": requests.schema.get("charge", pl.String), "amount": DECIMAL})
    exported = lake_events.scan(Path(out_dir), tenant) if requests.height else None
    if exported is None:
        return empty
    frames = [empty]
    for (slug,), part in requests.partition_by("meter", as_dict=True).items():
        spec = meters.get(str(slug))
        if spec is None:
            fail(f"charge {part['charge'][0]!r}: meter {slug!r} is not in the catalog snapshot", "unknown_meter")
        events = exported.filter(
            pl.col("date").is_in(pl.lit(_days(part)).implode()) & (pl.col("type") == spec.event_type)
        ).select(customer="subject", time="time", data="data")
        inside = (
            events.join(part.lazy().select("charge", "customer", "from", "to"), on="customer")
            .filter((pl.col("time") >= pl.col("from")) & (pl.col("time") < pl.col("to")))
            .select("charge", "data")
            .collect()
        )
        if inside.height == 0:
            continue
        data = inside.get_column("data").to_arrow().cast(pa.string())
        amounts = pl.from_arrow(event_values(spec, data))
        frames.append(inside.select("charge", amount=amounts).drop_nulls("amount"))
    return pl.concat(frames, how="vertical")


def _dimensions(dimensions: list[str] | None, part: pl.DataFrame) -> list[str]:
    """A group's dimensions, sorted (as combinations sort them); none for null or an empty list."""
    dims = sorted(dimensions or [])
    if len(set(dims)) != len(dims):
        fail(
            f"requests for charge {part['charge'][0]!r}: dimensions must be distinct; got {dimensions}",
            "invalid_requests",
        )
    return dims


def _plan(
    out_dir: str | Path, tenant: str, slug: str, aggregation: str, part: pl.DataFrame, dims: list[str]
) -> pl.LazyFrame | None:
    """The lazy fold of one meter's usage for the charges of ``part``, which all ask for the dimensions ``dims``."""
    usage = lake_usage.scan(Path(out_dir), tenant, slug)
    if usage is None:
        return None  # No usage was ever exported for this meter: no charge of it has a row.
    meter_dims = [name for name in usage.collect_schema().names() if name not in lake_usage.COLUMNS]
    missing = [d for d in dims if d not in meter_dims]
    if missing:
        fail(
            f"charge {part['charge'][0]!r} asks for dimension {missing[0]!r} of meter {slug!r}, which has "
            f"{', '.join(map(repr, meter_dims)) if meter_dims else 'no dimensions'}",
            "invalid_dimensions",
        )

    usage = usage.filter(pl.col("date").is_in(pl.lit(_days(part)).implode())).select(
        "customer", *dims, "window_start", _scaled_value(), pl.col("events").cast(pl.UInt64)
    )
    charges = part.lazy().select("charge", "customer", "from", "to")
    start = pl.col("window_start")
    inside = usage.join(charges, on="customer", how="inner").filter((start >= pl.col("from")) & (start < pl.col("to")))
    # Grouping by the dimension columns is grouping by the combination (its text is a function of them), and
    # encoding the text once per group is far cheaper than once per minute.
    folded = inside.group_by("charge", *dims).agg(events=pl.col("events").sum(), **_fold(aggregation))
    combination = combination_expr(dims) if dims else pl.lit(None, pl.String)
    return folded.select("charge", combination.alias("combination"), pl.exclude("charge", "combination", *dims))


def _scaled_value() -> pl.Expr:
    """``value`` as an Int128 count of 10^-9: sums and products on it are exact, where polars' decimals cut digits."""
    return pl.col("value").cast(DECIMAL).to_physical().alias("value")


def _fold(aggregation: str) -> dict[str, pl.Expr]:
    """The per-charge fold of one aggregation, as named aggregations.

    ``_scaled`` (Int128 counts of 10^-9), ``_shadow`` (its Float64 twin, which catches a sum that wrapped) and, for
    latest, ``_ambiguous``.
    """
    value, events = pl.col("value"), pl.col("events")
    if aggregation in ("sum", "count"):
        return {"_scaled": value.sum(), "_shadow": shadow(value).sum()}
    if aggregation in ("min", "max"):
        extreme = value.min() if aggregation == "min" else value.max()
        return {"_scaled": extreme, "_shadow": shadow(extreme)}
    if aggregation == "latest":
        last = value.filter(pl.col("window_start") == pl.col("window_start").max())
        return {"_scaled": last.first(), "_shadow": shadow(last.first()), "_ambiguous": last.n_unique() > 1}
    if aggregation == "avg":
        # Σ(mean × events) exactly, on Int128, then divided and rounded half to even: no float, no cut digits.
        weighted = value * events.cast(pl.Int128)
        n = events.sum().cast(pl.Int128)
        total = weighted.sum()
        return {"_scaled": divide_half_even(total, n), "_shadow": (shadow(value) * events.cast(pl.Float64)).sum()}
    raise AssertionError(f"aggregation {aggregation!r} reached the fold")  # _check_meters refused it


def _finish(frame: pl.DataFrame, slug: str, aggregation: str) -> pl.DataFrame:
    """A collected fold checked (range, latest's ambiguity) and put in :data:`QUANTITIES_SCHEMA`."""
    if frame.height and frame.select(out_of_range(pl.col("_scaled"), pl.col("_shadow")).any()).item():
        over = frame.filter(out_of_range(pl.col("_scaled"), pl.col("_shadow")))
        raise ValueOverflow(
            f"charge {over['charge'][0]!r}: the usage of meter {slug!r} leaves the range pricing "
            "computes exactly (quantities below 10^29); rate shorter periods or check the usage"
        )
    if "_ambiguous" in frame.columns and frame.get_column("_ambiguous").any():
        bad = frame.filter(pl.col("_ambiguous"))
        fail(
            f"charge {bad['charge'][0]!r}: meter {slug!r} keeps the latest value, and in this charge's latest "
            "minute the combinations of its dimensions that the charge adds together hold different values; the "
            "export keeps no event times within a minute, so which came last is unknown. Ask for the meter's "
            "dimensions (dimensions=[...]) to price each combination's latest value",
            "ambiguous_latest",
        )
    return frame.select(
        "charge",
        "combination",
        quantity=from_scaled(pl.col("_scaled"), DECIMAL_PLACES),
        events=pl.col("events").cast(pl.UInt64),
    )


def _days(part: pl.DataFrame) -> pl.Series:
    """Every UTC day a charge of ``part`` touches: the partitions to read.

    Computed from the distinct periods (a million subscriptions billed monthly share a handful), then unioned.
    """
    periods = part.select(
        first=pl.col("from").dt.date(), last=(pl.col("to") - pl.duration(minutes=1)).dt.date()
    ).unique()
    days = periods.select(pl.date_ranges("first", "last").alias("day")).explode("day").unique()
    return days.get_column("day").cast(pl.Date)


def _checked(requests: pl.DataFrame) -> pl.DataFrame:
    """``requests`` validated, with ``from``/``to`` as UTC microseconds and ``dimensions`` (null when absent)."""
    schema = requests.schema
    for name in ("charge", "customer", "meter", "from", "to"):
        if name not in schema:
            fail(
                f"requests has no column {name!r}; it needs charge, customer, meter, from, to and optionally "
                "dimensions",
                "invalid_requests",
            )
    if not (schema["charge"] == pl.String or schema["charge"].is_integer()):
        fail(f"requests column 'charge' must be String or an integer type; got {schema['charge']}", "invalid_requests")
    for name in ("customer", "meter"):
        if schema[name] != pl.String:
            fail(f"requests column {name!r} must be String; got {schema[name]}", "invalid_requests")
    bounds = {}
    for name in ("from", "to"):
        dtype = schema[name]
        if not isinstance(dtype, pl.Datetime):
            fail(f"requests column {name!r} must be a Datetime (UTC); got {dtype}", "invalid_requests")
        column = pl.col(name)
        column = column.dt.replace_time_zone("UTC") if dtype.time_zone is None else column.dt.convert_time_zone("UTC")
        bounds[name] = column.cast(_UTC)
    if "dimensions" in schema:
        if schema["dimensions"] not in (pl.List(pl.String), pl.List(pl.Null), pl.Null):
            fail(f"requests column 'dimensions' must be List(String); got {schema['dimensions']}", "invalid_requests")
        dims = pl.col("dimensions").cast(pl.List(pl.String))
    else:
        dims = pl.lit(None, pl.List(pl.String))
    frame = requests.select("charge", "customer", "meter", **bounds, dimensions=dims)

    start, end = pl.col("from"), pl.col("to")
    problem = (
        pl.when(pl.any_horizontal(pl.col("charge", "customer", "meter", "from", "to").is_null()))
        .then(pl.lit("charge, customer, meter, from and to must not be null"))
        .when(start >= end)
        .then(pl.lit("from must be before to (the period is [from, to))"))
        .when((start.dt.epoch("us") % _MINUTE_US != 0) | (end.dt.epoch("us") % _MINUTE_US != 0))
        .then(pl.lit("from and to must fall on whole minutes: the export keeps usage per minute"))
    )
    # `any` first: filtering millions of rows costs far more than testing them, even when none is kept.
    if frame.select(problem.is_not_null().any()).item():
        bad = frame.select("charge", problem=problem).filter(pl.col("problem").is_not_null())
        fail(f"requests for charge {bad['charge'][0]!r}: {bad['problem'][0]}", "invalid_requests")
    if frame.get_column("charge").n_unique() != frame.height:
        repeated = frame.filter(pl.col("charge").is_duplicated())
        fail(
            f"charge keys must be unique in requests; {repeated['charge'][0]!r} is repeated (one row per charge: "
            "its usage would be counted twice)",
            "invalid_requests",
        )
    return frame


def _check_meters(requests: pl.DataFrame, meters: Mapping[str, str]) -> None:
    for slug in requests.get_column("meter").unique().sort().to_list():
        aggregation = meters.get(slug)
        if aggregation is None:
            charge = requests.filter(pl.col("meter") == slug)["charge"][0]
            fail(
                f"charge {charge!r} names meter {slug!r}, which is not among the tenant's meters "
                f"({', '.join(sorted(meters)) or 'none'})",
                "unknown_meter",
            )
        if aggregation == "unique_count":
            fail(
                f"meter {slug!r} counts unique values (unique_count), which pricing cannot fold over a period: the "
                "export keeps each minute's number of distinct values, and those do not add up (a value seen in "
                "two minutes would be counted twice). Price a count or sum meter instead",
                "unsupported_meter",
            )
        if aggregation not in AGGREGATIONS:
            fail(
                f"meter {slug!r} has aggregation {aggregation!r}; expected one of {', '.join(sorted(AGGREGATIONS))}",
                "unknown_meter",
            )
