"""The tenant's revenue settings: the reporting time zone, the breakage policy, and the general ledger's codes.

:class:`RevenueSettings` is one item per tenant, replaced whole (``PUT /v1/revenue/settings``); a tenant that never
set it has :data:`DEFAULT`. What each setting changes:

- ``timezone``: the reporting zone (IANA). Months, days and "through 2026-11-30" are read in it: a fee is earned by
  its local days, a report's month is a local calendar month (:mod:`meter.money.revenue`).
- ``breakage``: what becomes of a prepaid commit's unused amount when it expires: ``at_expiry`` recognizes it as
  revenue then (the customer can no longer use it); ``none`` leaves it deferred (refundable credit: it is owed back
  until refunded or credited).
- ``accounts``: the general ledger's account code for each of meter's ledger accounts, in the export an accounting
  tool imports (``GET /v1/revenue/gl``); an account not named keeps its code in :data:`DEFAULT_CODES`.
"""

from __future__ import annotations

from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meter.catalog.types import Checked, Text, invalid
from meter.money.ledger import ACCOUNTS

__all__ = ["BREAKAGE", "DEFAULT", "DEFAULT_CODES", "Breakage", "RevenueSettings"]

Breakage = Literal["at_expiry", "none"]
BREAKAGE: tuple[str, ...] = get_args(Breakage)
#: A small chart of accounts in the usual numbering (assets 1xxx, liabilities 2xxx, revenue 4xxx, expenses 6xxx).
DEFAULT_CODES: dict[str, str] = {
    "cash": "1000",
    "payments_clearing": "1010",
    "accounts_receivable": "1200",
    "unbilled_revenue": "1210",
    "tax_payable": "2200",
    "deferred_revenue": "2300",
    "customer_credit": "2400",
    "revenue": "4000",
    "refunds": "4900",
    "bad_debt": "6100",
}
assert set(DEFAULT_CODES) == set(ACCOUNTS), "every ledger account has a default code"


class RevenueSettings(Checked, forbid_unknown_fields=True):
    timezone: Text = "UTC"
    breakage: Breakage = "at_expiry"
    #: Ledger account -> the general ledger's code for it (``{"revenue": "4010"}``).
    accounts: dict[Text, Text] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise invalid(f'timezone {self.timezone!r} is not an IANA name such as "Europe/Paris"') from None
        unknown = sorted(set(self.accounts) - set(ACCOUNTS))
        if unknown:
            names = ", ".join(map(repr, unknown))
            raise invalid(f"accounts: {names} are not ledger accounts; use {', '.join(ACCOUNTS)}")
        empty = sorted(account for account, code in self.accounts.items() if not code.strip())
        if empty:
            raise invalid(f"accounts: the code of {', '.join(map(repr, empty))} is empty; give each a code")

    def code(self, account: str) -> str:
        """The general ledger's code of a ledger account."""
        return self.accounts.get(account) or DEFAULT_CODES[account]


DEFAULT = RevenueSettings()
