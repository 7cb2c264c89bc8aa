"""Top-ups: prepaid credit bought at once, by hand (``POST /v1/customers/{id}/top-ups``) or automatically.

A top-up adds a prepaid commit (a grant, drawn down by :func:`meter.billing.terms.credit_lines` like any other) to
the customer's subscription and issues its invoice finalized at once (reason ``top_up``): one ``commit`` line keyed
by the commit (:class:`~meter.billing.keys.CommitKey`), which the ledger posts to deferred revenue
(:func:`meter.money.ledger.invoice_finalized`) and which a cycle invoice therefore never bills again.

Exactly once by its id: the invoice ``<subscription>-topup-<id>`` and the top-up's record
(``top_up/<tenant>/<customer>/<id>``, what it bought and when) are written in one synced batch of the invoice store
(:meth:`InvoiceStore.issue`); the grant is then added to the catalog from the record (idempotent: a commit already
there is left as it is). A retry with the same body answers the same invoice and completes the grant if a crash came
between the two writes; the same id with another body is a 409 ``conflict``. Every top-up of the customer whose
grant is missing is completed by the next top-up call (:func:`complete_grants`), or at the server's start.

Automatic top-up (:func:`auto_top_up`): when the credit balance falls below the subscription's ``auto_top_up.below``,
``auto_top_up.amount`` is bought, with the id ``auto-<n>`` where ``n`` counts the automatic top-ups the caller's view
of the subscription holds, plus one: a caller that has not seen the last top-up yet asks for the same id again (and
gets the same invoice), so one crossing tops up once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec

from meter.billing.invoicer import Invoicer
from meter.billing.invoices import Invoice, InvoiceLine, RunWarning
from meter.billing.keys import CommitKey
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog, Commit, Credit, Discount, Subscription
from meter.catalog.currencies import CURRENCIES
from meter.catalog.types import Amount, Checked, Id, Time
from meter.exceptions import Conflict, InvalidInput, NotFound

__all__ = [
    "AUTO",
    "Sources",
    "TopUp",
    "TopUpBody",
    "TopUpResult",
    "auto_top_up",
    "complete_grants",
    "top_up",
    "top_ups",
]

#: Ids of automatic top-ups start with it (``auto-1``, ``auto-2``...).
AUTO = "auto-"
#: A top-up without ``expires_at`` lasts as long as its subscription, or until the last time the catalog holds.
_FOREVER = datetime(8999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class Sources:
    """What a top-up reads and writes: the invoice store, the catalog, and the invoicer's ``issue`` (tax, collection).

    :meth:`of` an :class:`Invoicer`; the server builds it from its stores, each of which it checks is called off the
    event loop.
    """

    store: InvoiceStore
    catalog: BillingCatalog
    issue: Callable[[Invoice, dict[str, msgspec.Struct], datetime | None], tuple[Invoice | None, list[RunWarning]]]

    @classmethod
    def of(cls, where: Invoicer | Sources) -> Sources:
        return where if isinstance(where, Sources) else cls(where.store, where.catalog, where.issue)


class TopUpBody(Checked, forbid_unknown_fields=True):
    """What ``POST /v1/customers/{id}/top-ups`` takes."""

    id: Id
    amount: Amount
    expires_at: Time | None = None
    priority: int = 0
    #: The subscription the credit goes to; needed only when the customer has several running.
    subscription: Id | None = None


class TopUp(msgspec.Struct):
    """A top-up as recorded with its invoice: what it bought (the commit's terms) and the invoice that billed it."""

    id: str
    customer: str
    subscription: str
    amount: Decimal
    start: datetime
    end: datetime
    priority: int
    invoice: str
    #: As asked (``end`` is the subscription's end, or the last time the catalog holds, without it).
    expires_at: datetime | None = None
    automatic: bool = False

    def commit(self) -> Commit:
        return Commit(
            id=self.id, amount=self.amount, start=self.start, end=self.end, kind="prepaid", priority=self.priority
        )

    def asked(self) -> tuple[Decimal, datetime | None, int]:
        """What a request must repeat to be a retry of this top-up."""
        return self.amount, self.expires_at, self.priority


class TopUpResult(msgspec.Struct):
    """What the route answers: the top-up and its invoice (finalized; paid when collected at once)."""

    top_up: TopUp
    invoice: Invoice
    warnings: list[RunWarning] = []


def _key(tenant: str, customer: str, top_up_id: str = "") -> str:
    return f"top_up/{tenant}/{customer}/{top_up_id}"


def _recorded(invoicer: Sources, tenant: str, customer: str, top_up_id: str) -> TopUp | None:
    raw = invoicer.store.raw(_key(tenant, customer, top_up_id))
    return None if raw is None else msgspec.json.decode(raw, type=TopUp)


def _subscription(invoicer: Sources, tenant: str, customer: str, named: str | None, at: datetime) -> Subscription:
    """The subscription a top-up goes to: the one named, else the customer's only one running at ``at``."""
    if named is not None:
        sub = invoicer.catalog.get_subscription(tenant, named)
        if sub.customer != customer:
            raise InvalidInput(f"subscription {named!r} is not customer {customer!r}'s", code="invalid_top_up")
        return sub
    invoicer.catalog.get_customer(tenant, customer)  # 404 for a customer that does not exist
    running = [
        s
        for s in invoicer.catalog.list_subscriptions(tenant)
        if s.customer == customer and s.start <= at and (s.end is None or at < s.end)
    ]
    if len(running) != 1:
        found = ", ".join(s.id for s in running) or "none"
        raise InvalidInput(
            f"customer {customer!r} has {len(running)} subscriptions running (of: {found}): a top-up needs exactly "
            "one, or `subscription` naming it",
            code="invalid_top_up",
        )
    return running[0]


def top_up(
    invoicer: Invoicer | Sources,
    tenant: str,
    customer: str,
    body: TopUpBody,
    now: datetime | None = None,
    automatic: bool = False,
) -> tuple[TopUpResult, bool]:
    """Buys ``body.amount`` of prepaid credit for the customer, exactly once by ``body.id`` (see the module doc).

    Returns the top-up with its invoice, and whether this call made it (False: a retry's answer).
    """
    invoicer = Sources.of(invoicer)
    now = now or datetime.now(UTC)
    complete_grants(invoicer, tenant, customer)
    done, new = _recorded(invoicer, tenant, customer, body.id), False
    warnings: list[RunWarning] = []
    if body.id.startswith(AUTO) != automatic:
        raise InvalidInput(
            f"top-up ids starting with {AUTO!r} are the automatic top-ups'; got {body.id!r}: choose another",
            code="invalid_top_up",
        )
    if done is None:
        sub = _subscription(invoicer, tenant, customer, body.subscription, now)
        currency = invoicer.catalog.get_customer(tenant, customer).currency
        _check(invoicer, tenant, body, sub, currency, now)
        done, warnings, new = _issue(invoicer, tenant, sub, body, currency, now, automatic)
    elif done.asked() != (body.amount, body.expires_at, body.priority) or body.subscription not in (
        None,
        done.subscription,
    ):
        raise Conflict(
            f"top-up {body.id!r} was made already with other terms ({done.amount} until {done.end.isoformat()}, "
            f"priority {done.priority}, subscription {done.subscription!r}): a retry repeats them; a new top-up "
            "needs a new id",
            code="conflict",
        )
    invoicer.catalog.add_commit(tenant, done.subscription, done.commit())
    return TopUpResult(top_up=done, invoice=invoicer.store.get(tenant, done.invoice), warnings=warnings), new


def top_ups(store: InvoiceStore, tenant: str, customer: str) -> list[TopUp]:
    """The customer's top-ups, by id."""
    return [msgspec.json.decode(raw, type=TopUp) for _, raw in store.raw_items(_key(tenant, customer))]


def _check(invoicer: Sources, tenant: str, body: TopUpBody, sub: Subscription, currency: str, now: datetime) -> None:
    """Everything that could refuse the grant once its invoice is issued, checked before it is."""
    digits = CURRENCIES[currency]
    if body.amount <= 0 or body.amount != body.amount.quantize(Decimal(1).scaleb(-digits)):
        raise InvalidInput(
            f"a top-up's amount must be above 0 and a whole number of {currency}'s minor unit ({digits} digits after "
            f"the point); got {body.amount}",
            code="invalid_top_up",
        )
    if body.expires_at is not None and body.expires_at <= now:
        raise InvalidInput(
            f"expires_at ({body.expires_at.isoformat()}) must be after now ({now.isoformat()})", code="invalid_top_up"
        )
    terms: list[Commit | Credit | Discount] = [*sub.commits, *sub.credits, *sub.discounts]
    if any(t.id == body.id for t in terms):
        raise Conflict(
            f"subscription {sub.id!r} has a term {body.id!r} already: a top-up needs an id of its own",
            code="conflict",
        )
    if _end(body, sub) <= now:
        raise InvalidInput(
            f"subscription {sub.id!r} ended at {_end(body, sub).isoformat()}: a top-up goes to a running one",
            code="invalid_top_up",
        )
    invoicer.catalog.add_commit(tenant, sub.id, _record(body, sub, now).commit(), check_only=True)


def _end(body: TopUpBody, sub: Subscription) -> datetime:
    return body.expires_at or sub.end or _FOREVER


def _record(body: TopUpBody, sub: Subscription, now: datetime, automatic: bool = False) -> TopUp:
    return TopUp(
        id=body.id,
        customer=sub.customer,
        subscription=sub.id,
        amount=body.amount,
        start=now,
        end=_end(body, sub),
        priority=body.priority,
        invoice=f"{sub.id}-topup-{body.id}",
        expires_at=body.expires_at,
        automatic=automatic,
    )


def _issue(
    invoicer: Sources,
    tenant: str,
    sub: Subscription,
    body: TopUpBody,
    currency: str,
    now: datetime,
    automatic: bool,
) -> tuple[TopUp, list[RunWarning], bool]:
    record = _record(body, sub, now, automatic)
    end = record.end
    tz = invoicer.catalog.get_customer(tenant, sub.customer).timezone
    line = InvoiceLine(
        kind="commit",
        description=f"top-up {body.id}: prepaid credit" + (" (automatic)" if automatic else ""),
        amount=body.amount,
        period_start=now,
        period_end=end,
        key=CommitKey(sub.id, "commit", body.id).text(),
    )
    invoice = Invoice(
        id=record.invoice,
        tenant=tenant,
        customer=sub.customer,
        subscription=sub.id,
        currency=currency,
        reason="top_up",
        period_start=now,
        period_end=end,
        issued_at=now,
        lines=[line],
        subtotal=body.amount,
        total=body.amount,
        period=f"{now.astimezone(ZoneInfo(tz)):%Y-%m}",
    )
    issued, warnings = invoicer.issue(invoice, {_key(tenant, sub.customer, body.id): record}, now)
    if issued is None:  # another call issued it meanwhile: its record was written with it
        found = _recorded(invoicer, tenant, sub.customer, body.id)
        if found is None:
            raise Conflict(f"invoice {record.invoice!r} exists already and is no top-up's", code="conflict")
        return found, [], False
    return record, warnings, True


def complete_grants(invoicer: Invoicer | Sources, tenant: str, customer: str) -> int:
    """Adds to the catalog the grant of every top-up of the customer whose invoice was issued without it (a crash).

    Returns how many were missing.
    """
    invoicer = Sources.of(invoicer)
    missing = 0
    for done in top_ups(invoicer.store, tenant, customer):
        try:
            sub = invoicer.catalog.get_subscription(tenant, done.subscription)
        except NotFound:
            continue  # the subscription was deleted since: nothing to grant on
        if done.commit() not in sub.commits:
            invoicer.catalog.add_commit(tenant, done.subscription, done.commit())
            missing += 1
    return missing


def auto_top_up(
    invoicer: Invoicer | Sources, tenant: str, seen: Subscription, balance: Decimal, now: datetime | None = None
) -> TopUpResult | None:
    """The automatic top-up due when the credit ``balance`` is below ``seen.auto_top_up.below``; None otherwise.

    ``seen`` is the subscription as the caller's balance reflects it: its id ``auto-<n>`` counts the automatic
    top-ups ``seen`` holds, so that asking again before the balance reflects the last one buys nothing more.
    """
    settings = seen.auto_top_up
    if settings is None or balance >= settings.below:
        return None
    n = sum(1 for c in seen.commits if c.id.startswith(AUTO))  # manual top-ups cannot take these ids
    body = TopUpBody(id=f"{AUTO}{n + 1}", amount=settings.amount, subscription=seen.id)
    return top_up(invoicer, tenant, seen.customer, body, now, automatic=True)[0]
