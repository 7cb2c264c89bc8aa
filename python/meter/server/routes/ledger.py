"""The ledger, read: journal entries (JSON, CSV or Parquet), the trial balance, customers' balances.

Everything is read from the invoices store's journal by :mod:`meter.money.reports`, on the thread pool (a trial
balance reads every entry); answers are encoded there too. Invariants: the tenant is the key's; a page of entries
holds at most ``limit`` entries and reads at most ``reports.SCAN`` (``next`` says where to carry on), so no request
holds the journal in memory; CSV and Parquet carry the same rows (one per journal line, :mod:`meter.lake.ledger`)
and give the next page's ``after`` in the ``Meter-Next`` header (absent on the last page).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from meter.billing.store import InvoiceStore
from meter.lake.ledger import csv_bytes, line_table
from meter.money import reports
from meter.money.ledger import ACCOUNTS
from meter.money.reports import CustomerBalance, EntryFilter, EntryPage, TrialBalance
from meter.server.context import Context, opened
from meter.server.errors import ApiError
from meter.server.formats import FORMATS, MEDIA, choose
from meter.server.http import Answer, Request
from meter.server.inputs import parse_time, read_limit
from meter.server.table import BOOL, TEXT, Kind, Param, Route, enum

__all__ = ["ROUTES"]

#: Entries per page at most (a page of CSV or Parquet is a file a finance tool reads: larger than a JSON page).
MAX_LIMIT = 10_000


def _optional_time(request: Request, name: str) -> datetime | None:
    value = request.param(name)
    return None if value is None else parse_time(value, name)


def _after(request: Request, name: str) -> int:
    value = request.param(name) or "0"
    if not (value.isascii() and value.isdigit()):
        raise ApiError(
            400, "invalid_query", f"'{name}' must be the `next` of the previous page (a number); got {value!r}"
        )
    return int(value)


def _limit(request: Request, name: str) -> int:
    limit = read_limit(request, name)
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "invalid_query", f"'{name}' must be a whole number 1-{MAX_LIMIT}; got {limit}")
    return limit


#: An optional RFC 3339 instant with an offset.
OPTIONAL_TIME = Kind(datetime, _optional_time, schema_extra={"format": "date-time"})
AFTER = Kind(Annotated[int, msgspec.Meta(ge=0)], _after)
PAGE = Kind(Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)], _limit)


def _store(ctx: Context) -> InvoiceStore:
    # A store a degraded start could not open is an `Unavailable`: its first use answers 503 store_unavailable.
    return cast("InvoiceStore", opened(ctx.invoices))


def _entries_answer(store: InvoiceStore, tenant: str, where: EntryFilter, after: int, limit: int, fmt: str) -> Answer:
    """A page of entries, encoded (on the thread pool: a page of Parquet takes a while)."""
    page = reports.entries(store, tenant, where, after, limit)
    if fmt == "json":
        return 200, page, {}
    headers = {"content-type": FORMATS[fmt]}
    if page.next is not None:
        headers["meter-next"] = str(page.next)
    if fmt == "csv":
        return 200, csv_bytes(page.data), headers
    sink = pa.BufferOutputStream()
    pq.write_table(line_table(page.data), sink, compression="zstd")
    return 200, sink.getvalue().to_pybytes(), headers


async def list_entries(
    ctx: Context,
    request: Request,
    account: str | None,
    customer: str | None,
    invoice: str | None,
    kind: str | None,
    from_: datetime | None,
    to: datetime | None,
    after: int,
    limit: int,
    fmt: str | None,
    accept: str,
) -> Answer:
    where = EntryFilter(account=account, customer=customer, invoice=invoice, kind=kind, start=from_, end=to)
    return await ctx.call(_entries_answer, _store(ctx), request.tenant, where, after, limit, choose(fmt, accept))


async def get_trial_balance(ctx: Context, request: Request, as_of: datetime | None, by_customer: bool) -> Answer:
    return 200, await ctx.call(reports.trial_balance, _store(ctx), request.tenant, as_of, by_customer), {}


async def list_balances(ctx: Context, request: Request, customer: str | None, as_of: datetime | None) -> Answer:
    return 200, await ctx.call(reports.customer_balances, _store(ctx), request.tenant, customer, as_of), {}


_AS_OF = Param("as_of", OPTIONAL_TIME, "Only entries created before this instant (RFC 3339); every entry when absent")

ROUTES = [
    Route(
        "GET",
        "/v1/ledger/entries",
        "read",
        list_entries,
        "Journal entries in the order they were posted (pages: `limit`, then `after`=`next`)",
        returns=EntryPage,
        media=MEDIA,
        params=(
            Param("account", enum(*ACCOUNTS), "Only entries with a line on this account"),
            Param("customer", TEXT, "Only entries about this customer"),
            Param("invoice", TEXT, "Only entries of this invoice (its id)"),
            Param("kind", enum(*reports.KINDS), "Only entries of this kind (the money event that posted them)"),
            Param("from", OPTIONAL_TIME, "Only entries created at or after this instant (RFC 3339)"),
            Param("to", OPTIONAL_TIME, "Only entries created before this instant (RFC 3339): [from, to)"),
            Param("after", AFTER, "The `next` of the previous page (0, the default: from the first entry)"),
            Param("limit", PAGE, f"Entries per page, 1-{MAX_LIMIT} (100 when absent)"),
            Param(
                "format",
                enum(*FORMATS),
                "The answer's format, over `Accept`: json (the default), csv or parquet (one row per journal "
                "line; the next page's `after` in the `Meter-Next` header)",
                arg="fmt",
            ),
            Param("accept", enum(*FORMATS.values()), "The answer's format when `format` is absent", where="header"),
        ),
        description=(
            "A page reads at most 100,000 entries: with filters that match rarely it may hold fewer than `limit` "
            "entries (even none) and a `next` to carry on from; `next` is null once the journal was read to its end."
        ),
    ),
    Route(
        "GET",
        "/v1/ledger/trial-balance",
        "read",
        get_trial_balance,
        "The trial balance: each account's debits, credits and balance per currency, and their totals",
        returns=TrialBalance,
        params=(
            _AS_OF,
            Param("by_customer", BOOL, "Also each customer's receivable and credit balance (`customers`)"),
        ),
    ),
    Route(
        "GET",
        "/v1/ledger/balances",
        "read",
        list_balances,
        "Customers' balances from the ledger: what each owes (receivable) and holds as credit, per currency",
        returns=list[CustomerBalance],
        params=(Param("customer", TEXT, "Only this customer"), _AS_OF),
    ),
]
