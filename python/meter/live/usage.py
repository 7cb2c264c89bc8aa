"""Exact usage of the windows the live state watches, kept current from the engine's change feed.

A window is a customer's usage of one meter over ``[start, end)``, split by some of its dimensions (a matrix price
rates each combination apart). Rating asks for many windows at once (:meth:`LiveUsage.quantities`, in the requests
form of :func:`meter.billing.usage.period_quantities`), every time the customers' usage changed, so re-reading a
whole billing cycle each time would cost what the cycle holds (a month of minutes per customer). Instead, for the
additive aggregations (``sum``, ``count``), time is cut at a moving minute ``mark``:

- a window's **base** is its usage before the mark, ``[start, min(end, mark))``, read from the engine once and kept;
- a customer's **tail** is its usage from the mark on, ``[mark, ∞)``, read again whenever the customer's usage
  changed (a few minutes of data: the mark moves forward every ``step``, adding the tail's old part to the bases);
- a window that ends after any event can land (``end >= now + max_future``) and starts before the mark is its base
  plus the tail; any other window (one that starts after the mark, ends soon, or of another aggregation) is read
  whole, again whenever its customer's usage changed (such windows are young, or short, or rare).

The change feed (:meth:`meter.engine.Engine.changes`) says which (tenant, meter, customer) received events, and from
which event minute: a change from before the mark (a backdated event) drops the customer's bases of that meter, so
they are read again. Every value kept was read from the engine after the change that last touched it was drained, so
nothing is ever added twice and nothing acknowledged is missed: answers are as exact as a query, at the cost of the
few minutes since the mark. Memory: one small total per watched window and customer; windows not asked for during
``forget_after`` are dropped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl

from meter.billing.usage import QUANTITIES_SCHEMA
from meter.engine import Engine

__all__ = ["ADDITIVE", "Changed", "LiveUsage", "Totals", "UsageWindow"]

#: The aggregations whose totals add up across time, so a window is its base plus the tail.
ADDITIVE = frozenset({"sum", "count"})
_ZERO = Decimal(0)
_SUBJECTS_PER_QUERY = 10_000  # the engine's limit

#: A combination's totals: combination text (None without dimensions) -> (value, events).
Totals = dict[str | None, tuple[Decimal, int]]
#: A window asked for: (customer, meter, dimensions, start, end); dimensions sorted, () for none.
UsageWindow = tuple[str, str, tuple[str, ...], datetime, datetime]
#: (dimensions, start, end) of a window, for one (tenant, meter, customer); a base is (dimensions, start).
_Window = tuple[tuple[str, ...], datetime, datetime]
_Base = tuple[tuple[str, ...], datetime]


@dataclass
class Changed:
    """What a drain of the change feed found: the customers whose usage changed, per tenant, or everything."""

    customers: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: The feed overflowed (or this is the first drain): every customer must be refreshed.
    everything: bool = False
    #: Every event acknowledged before this instant is in what a query started after the drain reads.
    as_of: datetime = field(default_factory=lambda: datetime.now(UTC))


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _combinations(dims: tuple[str, ...], columns: Mapping[str, list[object]]) -> list[str | None]:
    """Each row's combination text, as rating writes it (:func:`meter.pricing.charges.combination_expr`)."""
    return [
        json.dumps(dict(zip(dims, values, strict=True)), ensure_ascii=False, separators=(",", ":"))
        for values in zip(*(columns[d] for d in dims), strict=True)
    ]


class LiveUsage:
    """The watched windows' usage for one engine; used by one thread (the tracker's)."""

    def __init__(
        self,
        engine: Engine,
        *,
        step: timedelta = timedelta(minutes=10),
        max_future: timedelta = timedelta(minutes=5),
        forget_after: timedelta = timedelta(hours=1),
        now: datetime | None = None,
    ) -> None:
        self._engine = engine
        self._step, self._max_future, self._forget_after = step, max_future, forget_after
        self.mark = self._mark_for(now or datetime.now(UTC))
        # (tenant, meter, customer) -> its bases ([start, mark)), its tail ([mark, ...)) per dimensions, its windows
        # that ended before the mark, and its windows read whole.
        self._bases: dict[tuple[str, str, str], dict[_Base, Totals]] = defaultdict(dict)
        self._closed: dict[tuple[str, str, str], dict[_Window, Totals]] = defaultdict(dict)
        self._tails: dict[tuple[str, str, str], dict[tuple[str, ...], Totals]] = defaultdict(dict)
        self._wholes: dict[tuple[str, str, str], dict[_Window, Totals]] = defaultdict(dict)
        self._used: dict[tuple[str, str, str], datetime] = {}
        #: Engine queries made (for the benchmark and the tests: the tail keeps them few).
        self.queries = 0

    def _mark_for(self, now: datetime) -> datetime:
        """The mark for ``now``: a whole ``step`` at least one step back, so the tail holds one to two steps."""
        step_us = int(self._step.total_seconds() * 1_000_000)
        now_us = int(now.timestamp() * 1_000_000)
        return datetime.fromtimestamp((now_us // step_us * step_us - step_us) / 1_000_000, UTC)

    # The change feed

    def drain(self, now: datetime | None = None) -> Changed:
        """Takes the engine's changes: forgets what they made stale, moves the mark when due; says who changed."""
        changed = Changed(as_of=now or datetime.now(UTC))
        table, overflowed = self._engine.changes()
        if overflowed:
            self._bases.clear()
            self._closed.clear()
            self._tails.clear()
            self._wholes.clear()
            changed.everything = True
        else:
            columns = table.select(["tenant", "meter", "customer", "earliest"]).to_pydict()
            for tenant, meter, customer, earliest in zip(
                columns["tenant"], columns["meter"], columns["customer"], columns["earliest"], strict=True
            ):
                key = (tenant, meter, customer)
                self._tails.pop(key, None)
                self._wholes.pop(key, None)
                if earliest < self.mark:
                    self._bases.pop(key, None)
                    self._closed.pop(key, None)
                changed.customers[tenant].add(customer)
        if changed.as_of - self.mark >= 2 * self._step:
            self._advance(self._mark_for(changed.as_of))
        self._forget(changed.as_of)
        return changed

    def _advance(self, mark: datetime) -> None:
        """Moves the mark to ``mark``: each base takes the usage of ``[old mark, mark)`` from one query per meter.

        Windows that start after the old mark had no base; they are read whole until the mark passes them, then get
        a base of their own when next asked for.
        """
        wanted: dict[tuple[str, str, tuple[str, ...]], set[str]] = defaultdict(set)
        for (tenant, meter, customer), bases in self._bases.items():
            for dims, _ in bases:
                wanted[(tenant, meter, dims)].add(customer)
        for (tenant, meter, dims), customers in wanted.items():
            got = self._read(tenant, meter, dims, self.mark, mark, customers)
            for customer in customers:
                bases = self._bases[(tenant, meter, customer)]
                for base, totals in bases.items():
                    if base[0] == dims:
                        bases[base] = _added(totals, got.get(customer, {}))
        self._tails.clear()
        self._wholes.clear()
        self.mark = mark

    def _forget(self, now: datetime) -> None:
        for key in [k for k, used in self._used.items() if now - used > self._forget_after]:
            del self._used[key]
            self._bases.pop(key, None)
            self._closed.pop(key, None)
            self._tails.pop(key, None)
            self._wholes.pop(key, None)

    def _latest(self, now: datetime) -> datetime:
        """A whole minute past the latest time an event acknowledged from now on can carry: where tails are read to.

        A window ending at or after it holds the whole tail; a later event comes through the feed, which drops the tail.
        """
        return _minute(now + self._max_future) + timedelta(minutes=2)

    # Windows

    def quantities(
        self, tenant: str, requests: pl.DataFrame, aggregations: Mapping[str, str], now: datetime | None = None
    ) -> pl.DataFrame:
        """Each request's usage, as :func:`meter.billing.usage.period_quantities` answers it from the export.

        ``requests``: ``charge``, ``customer``, ``meter``, ``from``, ``to`` (UTC, whole minutes) and optionally
        ``dimensions``; ``aggregations``: meter slug -> aggregation. A charge without usage has no row.
        """
        dims_column = requests.get_column("dimensions").to_list() if "dimensions" in requests.columns else None
        charges, windows = [], []
        for i, (charge, customer, meter, start, end) in enumerate(
            requests.select("charge", "customer", "meter", "from", "to").iter_rows()
        ):
            dims = tuple(sorted(dims_column[i] or [])) if dims_column is not None else ()
            charges.append(charge)
            windows.append((customer, meter, dims, start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)))
        rows: list[tuple[str, str | None, Decimal, int]] = []
        for charge, totals in zip(charges, self.totals(tenant, windows, aggregations, now), strict=True):
            rows += [(charge, combination, value, events) for combination, (value, events) in totals.items()]
        schema = {**QUANTITIES_SCHEMA, "charge": requests.schema["charge"]}
        return pl.DataFrame(rows, schema=list(schema.items()), orient="row")

    def totals(
        self, tenant: str, windows: Sequence[UsageWindow], aggregations: Mapping[str, str], now: datetime | None = None
    ) -> list[Totals]:
        """Each window's totals per combination (``aggregations``: meter slug -> aggregation)."""
        now = now or datetime.now(UTC)
        horizon = self._latest(now)
        asked = []
        for customer, meter, dims, start, end in windows:
            split = aggregations.get(meter) in ADDITIVE and start < self.mark and end >= horizon
            base_only = aggregations.get(meter) in ADDITIVE and end <= self.mark
            asked.append((customer, meter, dims, start, end, split, base_only))
        self._fetch(tenant, asked, now)
        found = []
        for customer, meter, dims, start, end, split, base_only in asked:
            key = (tenant, meter, customer)
            if split:
                found.append(_added(self._bases[key][(dims, start)], self._tails[key][dims]))
            elif base_only:
                found.append(self._closed[key][(dims, start, end)])
            else:
                found.append(self._wholes[key][(dims, start, end)])
        return found

    def _fetch(
        self,
        tenant: str,
        asked: Iterable[tuple[str, str, tuple[str, ...], datetime, datetime, bool, bool]],
        now: datetime,
    ) -> None:
        """Reads what the asked windows miss, one engine query per meter, dimensions and bounds."""
        bases: dict[tuple[str, tuple[str, ...], datetime], set[str]] = defaultdict(set)
        closed: dict[tuple[str, tuple[str, ...], datetime, datetime], set[str]] = defaultdict(set)
        tails: dict[tuple[str, tuple[str, ...]], set[str]] = defaultdict(set)
        wholes: dict[tuple[str, tuple[str, ...], datetime, datetime], set[str]] = defaultdict(set)
        for customer, meter, dims, start, end, split, base_only in asked:
            key = (tenant, meter, customer)
            self._used[key] = now
            if split and (dims, start) not in self._bases[key]:
                bases[(meter, dims, start)].add(customer)
            if base_only and (dims, start, end) not in self._closed[key]:
                closed[(meter, dims, start, end)].add(customer)
            if split and dims not in self._tails[key]:
                tails[(meter, dims)].add(customer)
            if not split and not base_only and (dims, start, end) not in self._wholes[key]:
                wholes[(meter, dims, start, end)].add(customer)
        for (meter, dims, start), customers in bases.items():
            got = self._read(tenant, meter, dims, start, self.mark, customers)
            for customer in customers:
                self._bases[(tenant, meter, customer)][(dims, start)] = got.get(customer, {})
        for (meter, dims, start, end), customers in closed.items():
            got = self._read(tenant, meter, dims, start, end, customers)
            for customer in customers:
                self._closed[(tenant, meter, customer)][(dims, start, end)] = got.get(customer, {})
        for (meter, dims), customers in tails.items():
            got = self._read(tenant, meter, dims, self.mark, self._latest(now), customers)
            for customer in customers:
                self._tails[(tenant, meter, customer)][dims] = got.get(customer, {})
        for (meter, dims, start, end), customers in wholes.items():
            got = self._read(tenant, meter, dims, start, end, customers)
            for customer in customers:
                self._wholes[(tenant, meter, customer)][(dims, start, end)] = got.get(customer, {})

    def _read(
        self, tenant: str, meter: str, dims: tuple[str, ...], start: datetime, end: datetime, customers: Iterable[str]
    ) -> dict[str, Totals]:
        """Usage of ``[start, end)`` per customer and combination, from the engine (all it acknowledged)."""
        found: dict[str, Totals] = defaultdict(dict)
        names = sorted(customers)
        for first in range(0, len(names), _SUBJECTS_PER_QUERY):
            self.queries += 1
            usage = self._engine.usage(
                tenant,
                meter,
                start=start,
                end=end,
                subjects=names[first : first + _SUBJECTS_PER_QUERY],
                group_by=["subject", *dims],
            )
            columns = usage.table.select(["subject", "value", "events", *dims]).to_pydict()
            combos = _combinations(dims, columns) if dims else [None] * len(columns["subject"])
            for subject, combination, value, events in zip(
                columns["subject"], combos, columns["value"], columns["events"], strict=True
            ):
                found[subject][combination] = (value, events)
        return found


def _added(base: Totals, more: Totals) -> Totals:
    """Two totals of the same window's parts added up (additive aggregations only)."""
    total = dict(base)
    for combination, (value, events) in more.items():
        before, count = total.get(combination, (_ZERO, 0))
        total[combination] = (before + value, count + events)
    return total
