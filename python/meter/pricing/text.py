r"""Text of whole columns, exactly as Python and msgspec write one value: decimals, times and JSON strings.

The columnar invoice run (:mod:`meter.billing.batch`) writes invoices as JSON text built from columns. So that an
invoice it stores is byte for byte the one the per-subscription path stores (``msgspec.json.encode`` of the
:class:`~meter.billing.invoices.Invoice`), every value is written here as msgspec writes it:

- a decimal as ``str(Decimal)``: positional when its exponent is at most 0 and its adjusted exponent at least -6,
  otherwise in exponent notation (``1E+3``, ``5E-7``); :func:`plain_text` writes it as ``format(value, "f")``, as the
  Parquet export does (:func:`meter.encoding.plain`);
- a UTC time as RFC 3339 with ``Z`` and microseconds only when there are some; :func:`iso_text` as
  ``datetime.isoformat`` (``+00:00``), as descriptions and ``events`` show times;
- a string as a JSON string (polars and msgspec escape the same characters: ``"``, ``\`` and control characters).

Decimals come as Int128 counts of ``10^-scale`` (the physical values of polars decimals).
"""

from __future__ import annotations

import polars as pl

__all__ = ["MAX_DIGITS", "fixed_text", "iso_text", "json_string", "time_text", "with_normalized"]

#: ``Decimal.normalize`` rounds to the context's 28 digits: a coefficient longer than that is not written here.
MAX_DIGITS = 28
_ZEROS = "0" * 80


def fixed_text(scaled: pl.Expr, digits: pl.Expr) -> pl.Expr:
    """``str`` of a decimal quantized to ``digits`` decimals (0 to 4), given as an Int128 count of ``10^-digits``."""
    magnitude = scaled.abs().cast(pl.String).str.zfill(digits.cast(pl.UInt32) + 1)
    cut = magnitude.str.len_chars() - digits.cast(pl.UInt32)
    point = pl.when(digits > 0).then(pl.concat_str(pl.lit("."), magnitude.str.slice(cut))).otherwise(pl.lit(""))
    sign = pl.when(scaled < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.concat_str(sign, magnitude.str.slice(0, cut), point)


def with_normalized(frame: pl.DataFrame, scaled: pl.Expr, scale: int, name: str) -> pl.DataFrame:
    """``frame`` with the normalized decimal ``scaled`` (Int128 counts of ``10^-scale``) as text.

    Adds ``<name>_str`` (``str(Decimal(x).normalize())``) and ``<name>_plain`` (``format(..., "f")``), null where
    ``scaled`` is null, and ``<name>_long``: the values whose coefficient has more digits than ``normalize`` keeps
    (the caller must not write those). Each step is materialised once: as one expression, polars would compute the
    coefficient over again in every branch.
    """
    tmp = [f"_{name}_{part}" for part in ("sign", "c", "n", "e")]
    sign, c, n, e = (pl.col(t) for t in tmp)
    full = scaled.abs().cast(pl.String)
    frame = frame.with_columns(
        pl.when(scaled < 0).then(pl.lit("-")).otherwise(pl.lit("")).alias(tmp[0]),
        full.str.strip_chars_end("0").alias(tmp[1]),
        full.str.len_chars().alias("_full_len"),
    )
    frame = frame.with_columns(pl.col(tmp[1]).str.len_chars().cast(pl.Int32).alias(tmp[2]))
    frame = frame.with_columns((pl.col("_full_len").cast(pl.Int32) - n - scale).alias(tmp[3])).drop("_full_len")
    adjusted, point = n - 1 + e, n + e  # point: where the point goes in the coefficient's digits (<= 0: before)
    fraction = (
        pl.when(point > 0)
        .then(c.str.slice(point.clip(0)))
        .otherwise(pl.concat_str(pl.lit(_ZEROS).str.slice(0, (-point).clip(0)), c))
    )
    positional = (
        pl.when(e >= 0)
        .then(pl.concat_str(c, pl.lit(_ZEROS).str.slice(0, e.clip(0))))
        .otherwise(
            pl.concat_str(
                pl.when(point > 0).then(c.str.slice(0, point.clip(0))).otherwise(pl.lit("0")), pl.lit("."), fraction
            )
        )
    )
    scientific = pl.concat_str(
        c.str.slice(0, 1),
        pl.when(n > 1).then(pl.concat_str(pl.lit("."), c.str.slice(1))).otherwise(pl.lit("")),
        pl.lit("E"),
        pl.when(adjusted >= 0).then(pl.lit("+")).otherwise(pl.lit("-")),
        adjusted.abs().cast(pl.String),
    )
    frame = frame.with_columns(positional.alias("_positional"))
    as_str = pl.when((e <= 0) & (adjusted >= -6)).then(pl.col("_positional")).otherwise(scientific)
    zero = n == 0
    return frame.with_columns(
        pl.when(zero).then(pl.lit("0")).otherwise(pl.concat_str(sign, as_str)).alias(f"{name}_str"),
        pl.when(zero).then(pl.lit("0")).otherwise(pl.concat_str(sign, pl.col("_positional"))).alias(f"{name}_plain"),
        (n > MAX_DIGITS).fill_null(False).alias(f"{name}_long"),
    ).drop(*tmp, "_positional")


def time_text(t: pl.Expr) -> pl.Expr:
    """How msgspec writes a UTC datetime: ``2026-10-01T00:00:00Z``, ``...T00:00:00.000005Z``."""
    return _time(t, "Z")


def iso_text(t: pl.Expr) -> pl.Expr:
    """``datetime.isoformat`` of a UTC datetime: ``2026-10-01T00:00:00+00:00``."""
    return _time(t, "+00:00")


def _time(t: pl.Expr, zone: str) -> pl.Expr:
    micros = t.dt.microsecond()
    fraction = (
        pl.when(micros != 0).then(pl.concat_str(pl.lit("."), micros.cast(pl.String).str.zfill(6))).otherwise(pl.lit(""))
    )
    return pl.concat_str(t.dt.strftime("%Y-%m-%dT%H:%M:%S"), fraction, pl.lit(zone))


def json_string(text: pl.Expr) -> pl.Expr:
    """A String column as JSON strings (``null`` for null), escaped as msgspec escapes."""
    encoded = pl.struct(text.alias("v")).struct.json_encode()
    return encoded.str.slice(5, encoded.str.len_chars() - 6)
