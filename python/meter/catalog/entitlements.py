"""Entitlements: what a plan (or one subscription, overriding it) lets a customer use, by feature.

Three kinds, as OpenMeter and Stripe name them:

- ``boolean``: the feature is on (``enabled``) or off;
- ``static``: on, with a configured ``value`` the customer's systems read (a rate limit of "600" requests a minute);
- ``metered``: an allowance of ``limit`` units of a ``meter`` per period, reset with the billing cycle (``reset:
  cycle``) or on a fixed calendar period in the customer's time zone (``day``, ``week`` starting on Monday,
  ``month``). A ``hard`` limit turns access off once the usage (plus what is reserved) reaches the limit; a soft one
  keeps access on and reports the overage, which the plan's price named by ``overage_price`` bills.

A subscription's ``entitlements`` replace the plan's of the same ``feature`` (and add the others).
"""

from __future__ import annotations

from typing import Literal

from meter.catalog.types import Checked, Id, Quantity, Slug, Text

__all__ = ["Entitlement", "EntitlementKind", "Reset"]

EntitlementKind = Literal["boolean", "static", "metered"]
Reset = Literal["cycle", "day", "week", "month"]


class Entitlement(Checked, forbid_unknown_fields=True):
    feature: Id
    kind: EntitlementKind
    #: boolean: whether the feature is on (a subscription can turn off what its plan turns on).
    enabled: bool = True
    #: static: the value the customer's systems read, as text ("600").
    value: Text | None = None
    #: metered: the meter counting the use, the allowance per period, when it resets, and what happens past it.
    meter: Slug | None = None
    limit: Quantity | None = None
    reset: Reset = "cycle"
    hard: bool = True
    #: metered with a soft limit: the id of the plan's price that bills the usage beyond the limit (on ``meter``).
    overage_price: Id | None = None
