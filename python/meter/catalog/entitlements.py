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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from meter.catalog.prices import Price
from meter.catalog.types import Checked, Id, Quantity, Slug, Text, Time, invalid

__all__ = [
    "Entitlement",
    "EntitlementKind",
    "Reset",
    "UnitGrant",
    "check_entitlements",
    "check_unit_grants",
    "effective_entitlements",
]

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


class UnitGrant(Checked, forbid_unknown_fields=True):
    """Prepaid units of a metered feature, in force over ``[start, end)`` (OpenMeter's grants; a top-up of units).

    Usage past a period's allowance (its entitlement's ``limit``) draws on the grants in force when it happens, lowest
    ``priority`` first, then the one expiring first; what a grant has left is what the checks add to ``remaining``.
    Units are not money: a grant of units changes access, never an invoice (buy money credit to pay usage).
    """

    id: Id
    feature: Id
    amount: Quantity
    start: Time
    end: Time
    priority: int = 0


def check_unit_grants(grants: Sequence[UnitGrant], entitlements: Sequence[Entitlement], where: str) -> None:
    """Refuses unit grants that no metered entitlement of the subscription could draw (400 ``invalid_catalog``)."""
    ids = [g.id for g in grants]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise invalid(f"{where}: unit grants need distinct ids; repeated: {', '.join(repeated)}")
    metered = {e.feature for e in entitlements if e.kind == "metered"}
    for g in grants:
        at = f"{where}, unit grant {g.id!r}"
        if g.feature not in metered:
            known = ", ".join(sorted(metered)) or "none"
            raise invalid(f"{at}: feature {g.feature!r} is not a metered entitlement of the subscription ({known})")
        if g.amount <= 0 or g.end <= g.start:
            raise invalid(f"{at}: needs an amount above 0 and an end after its start ([start, end) is half-open)")


#: Aggregations whose usage adds up over a period, so that a limit per period means something.
_ADDITIVE = ("sum", "count")


def check_entitlements(
    entitlements: Sequence[Entitlement],
    where: str,
    prices: Mapping[str, Sequence[Price]] | None,
    meters: Callable[[], Mapping[str, Any]] | None,
) -> None:
    """Refuses (400 ``invalid_catalog``) entitlements a check could not answer, saying what to fix.

    ``prices``: the plan's prices by id (every version's and the subscription's overrides: a price id may appear in
    several versions), which an ``overage_price`` must name on the entitlement's meter (None: not checked).
    ``meters``: the tenant's meters by slug, looked up when needed (None: not checked, as in a catalog opened
    without its meters).
    """
    features = [e.feature for e in entitlements]
    repeated = sorted({f for f in features if features.count(f) > 1})
    if repeated:
        raise invalid(f"{where}: each feature may have one entitlement; repeated: {', '.join(repeated)}")
    for e in entitlements:
        at = f"{where}, entitlement {e.feature!r} ({e.kind})"
        if e.kind != "metered":
            extra = [n for n in ("meter", "limit", "overage_price") if getattr(e, n) is not None]
            if e.kind == "boolean" and e.value is not None:
                extra.append("value")
            if extra:
                raise invalid(f"{at}: a {e.kind} entitlement has no {', '.join(extra)}; remove it or use kind metered")
            if e.kind == "static" and e.value is None:
                raise invalid(f'{at}: a static entitlement needs a `value` (such as "600")')
            continue
        if e.value is not None:
            raise invalid(f"{at}: a metered entitlement has no `value`; its allowance is `limit`")
        if e.meter is None or e.limit is None:
            raise invalid(f"{at}: a metered entitlement needs a `meter` and a `limit` (units per period)")
        if meters is not None:
            known = meters()
            meter = known.get(e.meter)
            if meter is None:
                names = ", ".join(sorted(known)) or "none yet"
                raise invalid(f"{at}: meter {e.meter!r} does not exist (this tenant's meters: {names})")
            aggregation = getattr(meter, "aggregation", None)
            if aggregation not in _ADDITIVE:
                raise invalid(
                    f"{at}: meter {e.meter!r} aggregates by {aggregation}, which does not add up over a period: "
                    "an allowance needs a sum or count meter"
                )
        if e.overage_price is None:
            continue
        if e.hard:
            raise invalid(f"{at}: `overage_price` bills usage past a soft limit: set `hard: false` or remove it")
        if prices is None:
            continue
        named = prices.get(e.overage_price, [])
        if not named:
            known_prices = ", ".join(sorted(prices)) or "none"
            raise invalid(
                f"{at}: overage_price {e.overage_price!r} is not a price of the plan (its prices: {known_prices})"
            )
        elsewhere = sorted({str(p.meter) for p in named if p.meter != e.meter})
        if elsewhere:
            raise invalid(
                f"{at}: overage_price {e.overage_price!r} prices meter {', '.join(elsewhere)}, not {e.meter!r}: "
                "name a price on the entitlement's meter"
            )


def effective_entitlements(plan: Sequence[Entitlement], subscription: Sequence[Entitlement]) -> list[Entitlement]:
    """What a subscription's customer is entitled to: the plan's, each replaced by the subscription's of its feature.

    The plan's order first, then the subscription's additions in theirs.
    """
    own = {e.feature: e for e in subscription}
    merged = [own.pop(e.feature, e) for e in plan]
    return merged + [e for e in subscription if e.feature in own]
