"""How meter writes decimals for people and programs: always as plain decimal text, never in exponent notation.

``str(Decimal)`` switches to exponent notation for some values: ``Decimal("20").normalize()`` is ``"2E+1"`` and a
zero with nine decimals (a polars ``Decimal(38, 9)``) is ``"0E-9"``; msgspec encodes decimals with ``str``. Every
JSON answer of the server, the CLI's output (which prints those answers) and the JSON text kept in the Parquet export
go through :func:`encode_json`, so a decimal is always written as ``format(value, "f")``: ``"20"``, ``"0.000000000"``.
How many decimals a value has is decided where it is computed: invoice amounts are quantized to their currency's
minor unit (``"20.00"``), so they print that way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

__all__ = ["encode_json", "plain", "to_builtins"]

#: A JSON string that reads as a decimal in exponent notation ("2E+1", "0E-9"). A text that merely looks like one
#: (an id "1E5") only costs the slow path, which rewrites decimals and nothing else.
_EXPONENT = re.compile(rb'"-?[0-9.]+E[-+]?[0-9]+"')


def plain(value: Decimal) -> str:
    """``value`` as plain decimal text, keeping its decimals: ``2E+1`` -> ``"20"``, ``0E-9`` -> ``"0.000000000"``."""
    if value.is_zero() and value.is_signed():
        value = value.copy_abs()  # "-0.00" says nothing that "0.00" does not
    return format(value, "f")


def to_builtins(obj: Any) -> Any:
    """``msgspec.to_builtins`` with every decimal as :func:`plain` text."""
    return _plain(msgspec.to_builtins(obj, builtin_types=(Decimal,), enc_hook=_sequence))


def encode_json(obj: Any) -> bytes:
    """JSON of ``obj`` (Structs, dicts, lists...) with decimals as plain text."""
    fast = msgspec.json.encode(obj, enc_hook=_sequence)
    # Without a string in exponent notation no decimal needs rewriting: the common case, and cheap ("EUR" is not one).
    if not _EXPONENT.search(fast):
        return fast
    return msgspec.json.encode(to_builtins(obj))


def _sequence(value: Any) -> Any:
    """Sequences msgspec does not know (an invoice run's stored invoices, read on demand) are written as lists."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__} as JSON")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
