"""ISO 4217: the currencies meter bills in, each with its minor unit (digits after the point).

The table comes from the ``iso4217`` package, which ships the list the ISO 4217 maintenance agency (SIX) publishes
and is released when the list changes.

Only current codes that have a minor unit are billable: the funds, metals and special codes whose minor unit ISO
gives as "N.A." (XAU, XDR, XTS, XXX...) have no amount to round to. Rounding (:mod:`meter.pricing.money`) reads its
minor units from this same table.
"""

from __future__ import annotations

from types import MappingProxyType

import iso4217

__all__ = ["CURRENCIES", "PUBLISHED", "is_currency"]

#: code -> digits after the point of its minor unit (2 for EUR, 0 for JPY, 3 for KWD, 4 for CLF).
CURRENCIES = MappingProxyType(dict(sorted((c.code, c.exponent) for c in iso4217.Currency if c.exponent is not None)))
#: The date of the ISO 4217 list in use.
PUBLISHED = iso4217.__published__


def is_currency(code: str) -> bool:
    """True for a current ISO 4217 code with a minor unit: ``"EUR"``, not ``"eur"``, ``"XYZ"`` or ``"XAU"``."""
    return code in CURRENCIES
