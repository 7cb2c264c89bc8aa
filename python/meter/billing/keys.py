"""What an invoice line bills, as a typed key, and the one text that stores it.

Every line that bills something carries a key; what a line bills is what its key rates at now minus what finalized
invoices billed under the same key (:mod:`meter.billing.invoicing`). Billing code builds and compares keys as the
frozen structs below; an :class:`~meter.billing.invoices.InvoiceLine` stores (and the API and the invoices export
show) their text, :meth:`text`, which :func:`parse_line_key` and :func:`parse_grant_key` read back:

==============  ===============================================================  ==============================
key             text                                                             a line that bills
==============  ===============================================================  ==============================
ChargeKey       ``<subscription>|<price>|<version>|<cycle start>|<cycle end>``   a price over a billing cycle
                (``|<part>`` appended for a version's 2nd, 3rd... part)
CommitKey       ``<subscription>|commit|<commit>``, ``...|shortfall|<commit>``    a prepaid commit, a shortfall
GrantKey        ``<subscription>|<grant>`` (an invoice line's ``grant``)          a credit or commit drawn down
                ``<subscription>|<grant>|<cycle start>``                         a recurring credit's cycle drawn
==============  ===============================================================  ==============================

Times are ``datetime.isoformat()`` of the cycle's UTC bounds. This is the format invoices have always been stored
in, so stored invoices read as they are (no migration); keys stored before they named the cycle named a segment
(``...|<segment start>|<segment end>``) and read as a :class:`ChargeKey` whose bounds are the segment's, which
invoicing then counts under today's key.

Invariants: ``parse(key.text()) == key`` for every key, and two keys are equal exactly when their texts are. That
needs no part to contain ``|``: catalog ids exclude it (:mod:`meter.catalog.types`), and :meth:`text` refuses a part
that has one rather than write a text that reads back as another key. The columnar run writes the same text with
:func:`charge_key_expr`, which joins its columns with the same separator in the same order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec
import polars as pl

from meter.pricing.errors import fail

__all__ = [
    "SEPARATOR",
    "ChargeKey",
    "CommitKey",
    "GrantKey",
    "LineKey",
    "charge_key_expr",
    "parse_grant_key",
    "parse_line_key",
]

SEPARATOR = "|"
_CODE = "invalid_line_key"


def _joined(parts: tuple[str, ...]) -> str:
    for part in parts:
        if SEPARATOR in part:
            fail(f"a line key part must not contain {SEPARATOR!r}; got {part!r}", _CODE)
    return SEPARATOR.join(parts)


class ChargeKey(msgspec.Struct, frozen=True):
    """One price of one plan version billed over one billing cycle of a subscription.

    ``part`` counts the version's parts in the cycle (a subscription that comes back to a version within one cycle
    has two); the cycle, not the segment, is named, so that a plan change or an end in the middle of a cycle changes
    what the key rates at rather than making a new key.
    """

    subscription: str
    price: str
    version: int
    cycle_start: datetime
    cycle_end: datetime
    part: int = 1

    def text(self) -> str:
        parts = (self.subscription, self.price, str(self.version), self.cycle_start.isoformat())
        text = _joined((*parts, self.cycle_end.isoformat()))
        return text if self.part == 1 else f"{text}{SEPARATOR}{self.part}"


class CommitKey(msgspec.Struct, frozen=True):
    """A prepaid commit bought (``commit``) or a postpaid commit's shortfall billed (``shortfall``)."""

    subscription: str
    kind: Literal["commit", "shortfall"]
    commit: str

    def text(self) -> str:
        return _joined((self.subscription, self.kind, self.commit))


class GrantKey(msgspec.Struct, frozen=True):
    """A credit or prepaid commit of a subscription, as a ``credit`` line draws on it (the line's ``grant``).

    A recurring credit grants its amount anew each billing cycle: what each cycle drew is kept apart, under the
    cycle's start (``cycle``), so that a cycle's remainder (and what it rolls over) is its own grant minus its own
    draws, and a re-run of any invoice never draws on a cycle twice.
    """

    subscription: str
    grant: str
    cycle: datetime | None = None

    def text(self) -> str:
        parts = (self.subscription, self.grant)
        return _joined(parts if self.cycle is None else (*parts, self.cycle.isoformat()))


#: The key of a line that bills something (a ``credit`` line draws on a :class:`GrantKey` instead).
LineKey = ChargeKey | CommitKey


def parse_line_key(text: str) -> LineKey:
    """The key whose :meth:`text` is ``text``; ``InvalidInput`` (``invalid_line_key``) for any other text."""
    parts = text.split(SEPARATOR)
    try:
        if len(parts) == 3 and parts[1] in ("commit", "shortfall"):
            kind: Literal["commit", "shortfall"] = "commit" if parts[1] == "commit" else "shortfall"
            return CommitKey(parts[0], kind, parts[2])
        if len(parts) in (5, 6):
            part = int(parts[5]) if len(parts) == 6 else 1
            start, end = datetime.fromisoformat(parts[3]), datetime.fromisoformat(parts[4])
            key = ChargeKey(parts[0], parts[1], int(parts[2]), start, end, part)
            if key.text() == text:  # not a spelling of it (a part "+1", "01" or "1", a time in another form)
                return key
    except ValueError:
        pass
    fail(f"{text!r} is not an invoice line key (see meter.billing.keys)", _CODE)


def charge_cycle(text: str) -> tuple[datetime, datetime] | None:
    """The billing cycle ``[start, end)`` a :class:`ChargeKey`'s text names; None for any other key's.

    For keys this module wrote (an invoice's lines): a fifth of :func:`parse_line_key`'s cost, which a close pays
    for every usage line of a year.
    """
    parts = text.split(SEPARATOR)
    if len(parts) not in (5, 6):
        return None
    try:
        return datetime.fromisoformat(parts[3]), datetime.fromisoformat(parts[4])
    except ValueError:
        return None


def parse_grant_key(text: str) -> GrantKey:
    """The :class:`GrantKey` whose :meth:`~GrantKey.text` is ``text``."""
    parts = text.split(SEPARATOR)
    if len(parts) == 2:
        return GrantKey(parts[0], parts[1])
    if len(parts) == 3:
        try:
            key = GrantKey(parts[0], parts[1], datetime.fromisoformat(parts[2]))
        except ValueError:
            pass
        else:
            if key.text() == text:
                return key
    fail(f"{text!r} is not a grant key (<subscription>|<grant>, or |<cycle start> after them)", _CODE)


def charge_key_expr(
    subscription: pl.Expr | str, price: pl.Expr | str, version: pl.Expr | str, start: pl.Expr | str, end: pl.Expr | str
) -> pl.Expr:
    """:meth:`ChargeKey.text` of each row (part 1), from String columns (times already as ``isoformat`` text)."""
    parts: list[pl.Expr | str] = []
    for column in (subscription, price, version, start, end):
        parts += [pl.lit(SEPARATOR), column]
    return pl.concat_str(parts[1:])
