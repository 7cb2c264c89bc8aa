"""Reservations: an amount held against a customer's allowance or credit balance while long-running work runs.

A batch job or an agent run reserves its estimate before it starts (refused, 409 ``insufficient``, when it does not
fit what is left), then settles with what it used, or releases, or lets the hold expire after its timeout. While a
reservation is held its amount counts against ``remaining`` (of the feature) or the balance: the live state reads
:meth:`Reservations.held` when it refreshes a customer, which every change of its holds asks for (``touch``).
Settling only ends the hold and records the actual amount: the usage itself is what the events report.

Keys (the invoice store; written through :meth:`~meter.billing.store.InvoiceStore.transaction`, synced):

=============================================  ==========================================================
``reservation/<tenant>/<id>``                  a :class:`Reservation` as JSON, kept after it ends
``reservation_held/<tenant>/<customer>/<id>``  present while it is held: what a start reads to rebuild the index
=============================================  ==========================================================

Exactly once: the id is the tenant's idempotency key. A retry with the same body answers the reservation made (in
whatever state it now is), with another body a 409 ``conflict``; settling twice with the same actual answers the
settled reservation. Reservations of one customer are made one at a time (a lock per customer, held across the fit
check and the write), so two cannot both fit the last units; the in-memory index changes only after the write is
durable, and is rebuilt from ``reservation_held/`` when the store is opened again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal, Protocol

import msgspec

from meter.billing.store import InvoiceStore
from meter.catalog.types import Checked, Id, Quantity
from meter.exceptions import Conflict, InvalidInput, NotFound, StoreFailed
from meter.live.answers import Balance, Standing

__all__ = ["BALANCE", "Reservation", "ReservationBody", "Reservations", "Live", "SettleBody"]

#: The target that reserves against the credit balance (any other target is a metered feature's id).
BALANCE = "balance"


class Live(Protocol):
    """What reservations need of the live account state (:class:`meter.live.tracker.Tracker` is one)."""

    def standing(self, tenant: str, customer: str) -> Standing | None: ...

    def balance(self, tenant: str, customer: str) -> Balance | None: ...

    def touch(self, tenant: str, customer: str) -> None:
        """The customer's reservations moved: recompute its state at the next refresh."""
        ...


Status = Literal["held", "settled", "released", "expired"]
_ZERO = Decimal(0)
_MAX_SECONDS = 30 * 24 * 3600


class ReservationBody(Checked, forbid_unknown_fields=True):
    #: The tenant's idempotency key: a retry with the same id answers the same reservation.
    id: Id
    #: A metered feature's id, or "balance" for the credit balance.
    target: Id
    #: In the feature's meter units, or in the customer's currency for the balance.
    amount: Quantity
    expires_in_seconds: Annotated[int, msgspec.Meta(ge=1, le=_MAX_SECONDS)] = 3600


class SettleBody(Checked, forbid_unknown_fields=True):
    #: What the work used (as its events report it): recorded with the reservation, which ends.
    actual: Quantity


class Reservation(msgspec.Struct, kw_only=True):
    id: str
    customer: str
    target: str
    amount: Decimal
    expires_in_seconds: int
    status: Status
    created_at: datetime
    expires_at: datetime
    #: When it was settled, released or expired.
    ended_at: datetime | None = None
    actual: Decimal | None = None


def _key(tenant: str, reservation_id: str) -> str:
    return f"reservation/{tenant}/{reservation_id}"


def _held_key(tenant: str, customer: str, reservation_id: str) -> str:
    return f"reservation_held/{tenant}/{customer}/{reservation_id}"


class Reservations:
    """The reservations of one invoice store, and the index of those held, per customer, in memory.

    ``live`` is how a reservation's fit is checked, and is told when a customer's holds moved; until it is given
    (the live state wired in), reserving is a 503 and everything else works.
    """

    def __init__(
        self,
        store: InvoiceStore,
        live: Live | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.live, self.clock = store, live, clock
        self._index_lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        #: (tenant, customer) -> id -> the held reservation.
        self._held: dict[tuple[str, str], dict[str, Reservation]] = {}
        for key, _ in store.raw_items("reservation_held/"):
            _, tenant, customer, reservation_id = key.split("/", 3)
            raw = store.raw(_key(tenant, reservation_id))
            if raw is not None:
                held = msgspec.json.decode(raw, type=Reservation)
                if held.status == "held":
                    self._held.setdefault((tenant, customer), {})[held.id] = held

    def held(self, tenant: str, customer: str, now: datetime | None = None) -> dict[str, Decimal]:
        """What the customer's reservations hold now, by target (a feature, or ``balance``).

        Those past their expiry hold nothing, swept or not.
        """
        now = now or self.clock()
        totals: dict[str, Decimal] = {}
        with self._index_lock:
            for r in self._held.get((tenant, customer), {}).values():
                if now < r.expires_at:
                    totals[r.target] = totals.get(r.target, _ZERO) + r.amount
        return totals

    def of_customer(self, tenant: str, customer: str) -> list[Reservation]:
        """The customer's held reservations, oldest first."""
        with self._index_lock:
            return sorted(self._held.get((tenant, customer), {}).values(), key=lambda r: (r.created_at, r.id))

    def get(self, tenant: str, reservation_id: str) -> Reservation:
        raw = self.store.raw(_key(tenant, reservation_id))
        if raw is None:
            raise NotFound(f"no reservation {reservation_id!r}")
        return msgspec.json.decode(raw, type=Reservation)

    def _lock(self, tenant: str, customer: str) -> threading.Lock:
        with self._index_lock:
            return self._locks.setdefault((tenant, customer), threading.Lock())

    def _index(self, tenant: str, reservation: Reservation) -> None:
        with self._index_lock:
            held = self._held.setdefault((tenant, reservation.customer), {})
            if reservation.status == "held":
                held[reservation.id] = reservation
            else:
                held.pop(reservation.id, None)
        if self.live is not None:
            self.live.touch(tenant, reservation.customer)

    def reserve(self, tenant: str, customer: str, body: ReservationBody) -> Reservation:
        """Holds ``body.amount`` of the target if it fits now; the reservation already made under this id otherwise."""
        with self._lock(tenant, customer):
            existing = self._replay(tenant, customer, body, self.store.raw(_key(tenant, body.id)))
            if existing is not None:
                return existing
            self._check_fit(tenant, customer, body)
            with self.store.transaction(tenant, self.clock()) as change:
                existing = self._replay(tenant, customer, body, change.get(_key(tenant, body.id)))
                if existing is not None:  # made meanwhile for another customer's lock: the id is the tenant's
                    return existing
                reservation = Reservation(
                    id=body.id,
                    customer=customer,
                    target=body.target,
                    amount=body.amount,
                    expires_in_seconds=body.expires_in_seconds,
                    status="held",
                    created_at=change.now,
                    expires_at=change.now + timedelta(seconds=body.expires_in_seconds),
                )
                change.put(_key(tenant, body.id), reservation)
                change.put(_held_key(tenant, customer, body.id), b"")
            self._index(tenant, reservation)
            return reservation

    @staticmethod
    def _replay(tenant: str, customer: str, body: ReservationBody, raw: bytes | None) -> Reservation | None:
        """The stored reservation a retry answers; a 409 ``conflict`` when the id was used for something else."""
        if raw is None:
            return None
        stored = msgspec.json.decode(raw, type=Reservation)
        asked = (customer, body.target, body.amount, body.expires_in_seconds)
        if (stored.customer, stored.target, stored.amount, stored.expires_in_seconds) != asked:
            raise Conflict(
                f"reservation {body.id!r} exists with another body (customer {stored.customer!r}, target "
                f"{stored.target!r}, amount {stored.amount}, expires_in_seconds {stored.expires_in_seconds}): "
                "a retry must send the same body; a new reservation needs a new id",
                code="conflict",
            )
        return stored

    def _check_fit(self, tenant: str, customer: str, body: ReservationBody) -> None:
        """Refuses what does not fit: what is left before any reservation, less what is held now.

        The live state counts reservations at its refreshes, so what it says is left may not count the one made a
        moment ago: the fit is computed from what it says is left before reservations (a feature's limit less its
        usage; the grants' remaining plus what it assigned to reservations) less :meth:`held` now, which this lock
        keeps exact.
        """
        if self.live is None:
            raise StoreFailed(
                "reservations need the live account state, which is not running yet: retry shortly",
                code="live_unavailable",
            )
        standing = self.live.standing(tenant, customer)
        if standing is None:
            raise Conflict(
                f"customer {customer!r} has no live state: no subscription in force (or the server has just started "
                "and not computed it yet): nothing to reserve against",
                code="insufficient",
            )
        held = self.held(tenant, customer).get(body.target, _ZERO)
        if body.target == BALANCE:
            balance = self.live.balance(tenant, customer)
            if balance is None or standing.balance is None:
                raise Conflict(f"customer {customer!r} has no credit balance to reserve against", code="insufficient")
            unreserved = balance.balance + sum((g.reserved for g in balance.grants), _ZERO)
            left, what = unreserved - held, f"the credit balance ({standing.currency})"
        else:
            access = standing.entitlements.get(body.target)
            if access is None:
                known = ", ".join(sorted(standing.entitlements)) or "none"
                raise InvalidInput(
                    f"customer {customer!r} has no entitlement {body.target!r} (theirs: {known}); the target is a "
                    f'metered feature or "{BALANCE}"',
                    code="invalid_reservation",
                )
            if access.kind != "metered" or access.limit is None or access.usage is None:
                raise InvalidInput(
                    f"feature {body.target!r} is {access.kind}: only a metered feature or the balance can be reserved",
                    code="invalid_reservation",
                )
            left, what = access.limit - access.usage - held, f"the remaining allowance of {body.target!r}"
        if left < body.amount:
            raise Conflict(
                f"{body.amount} does not fit {what}: {max(left, _ZERO)} left after usage and held reservations",
                code="insufficient",
            )

    def _end(
        self,
        tenant: str,
        reservation_id: str,
        status: Status,
        actual: Decimal | None = None,
        now: datetime | None = None,
    ) -> Reservation:
        """Ends a held reservation as ``status``; a retry of the same end answers it again."""
        customer = self.get(tenant, reservation_id).customer
        with self._lock(tenant, customer), self.store.transaction(tenant, now or self.clock()) as change:
            raw = change.get(_key(tenant, reservation_id))
            assert raw is not None  # reservations are never deleted
            stored = msgspec.json.decode(raw, type=Reservation)
            if stored.status == "held" and change.now >= stored.expires_at:
                # Its time ran out before this call: it has held nothing since, whatever the sweep has done.
                stored = msgspec.structs.replace(stored, status="expired", ended_at=stored.expires_at)
                change.put(_key(tenant, reservation_id), stored)
                change.delete(_held_key(tenant, customer, reservation_id))
            if stored.status == "held":
                ended = msgspec.structs.replace(stored, status=status, ended_at=change.now, actual=actual)
                change.put(_key(tenant, reservation_id), ended)
                change.delete(_held_key(tenant, customer, reservation_id))
            elif stored.status == status and (status != "settled" or stored.actual == actual):
                ended = stored  # a retry
            elif status == "released" and stored.status == "expired":
                ended = stored  # nothing was held any more: releasing it is done
            else:
                settled = f" with actual {stored.actual}" if stored.status == "settled" else ""
                raise Conflict(
                    f"reservation {reservation_id!r} was {stored.status}{settled} at {stored.ended_at}: it can no "
                    f"longer be {status}",
                    code="invalid_state",
                )
        self._index(tenant, ended)
        return ended

    def settle(self, tenant: str, reservation_id: str, actual: Decimal, now: datetime | None = None) -> Reservation:
        """Ends the hold and records what the work used."""
        return self._end(tenant, reservation_id, "settled", actual, now)

    def release(self, tenant: str, reservation_id: str, now: datetime | None = None) -> Reservation:
        """Ends the hold with nothing used (the work was cancelled)."""
        return self._end(tenant, reservation_id, "released", None, now)

    def expire(self, now: datetime | None = None) -> list[Reservation]:
        """The sweep: every held reservation past its expiry, of every tenant, marked expired.

        Between sweeps those already hold nothing (:meth:`held`); the sweep makes it durable and visible.
        """
        now = now or self.clock()
        with self._index_lock:
            due = [
                (tenant, r.id) for (tenant, _), held in self._held.items() for r in held.values() if r.expires_at <= now
            ]
        return [self._end(tenant, reservation_id, "expired", None, now) for tenant, reservation_id in due]
