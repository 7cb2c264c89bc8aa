"""What a handler may use of the app: the stores, the thread pool, and a few facts about the server.

Handlers (`routes/*.py`) are functions of a `Context`, never of `MeterApp` itself, so that the route modules need
not import the app (the app imports them to build its router) and a handler cannot reach the ASGI plumbing.

Invariants:
- A store is `None` until startup opened it, `Unavailable` when a degraded start could not; a handler reaches it
  through `opened()` only, so that either is a 503 `store_unavailable` with Retry-After, never an AttributeError.
- Every call that can wait for a disk (rocksdict reads and writes, engine queries and writes, Parquet, the
  invoicer) goes through `Context.call`, which runs it on the app's thread pool: the event loop only parses,
  routes and encodes small answers, so that `/healthz` answers while a large query or an invoice run works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar

from meter.backfills import Backfills
from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.catalog.keys import KeyStore
from meter.engine import Engine
from meter.live.reservations import Reservations
from meter.live.tracker import Tracker
from meter.money.payments.dunning import Payments
from meter.money.webhooks.delivery import Settings as WebhookSettings
from meter.money.webhooks.delivery import WebhookWorker
from meter.server.errors import ApiError

__all__ = ["Context", "Unavailable", "opened"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Store = TypeVar("_Store")


class Unavailable:
    """Stands for a store that could not be opened (degraded start).

    Whatever a handler asks of it is a 503 `store_unavailable` with Retry-After, never an AttributeError on None.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __getattr__(self, name: str) -> Any:
        raise ApiError(
            503, "store_unavailable", f"this needs a store that is unavailable: {self.reason}", {"retry-after": "30"}
        )


def opened(store: _Store | Unavailable | None) -> _Store | Unavailable:
    """A store as a route uses it: open, or Unavailable (degraded), never None.

    authorize() needs the key store, so no route but the public ones runs before startup opened the stores; should one
    ever, it answers 503 `store_unavailable` like a store a degraded start could not open, never an AttributeError.
    """
    if store is None:
        raise ApiError(
            503, "store_unavailable", "the stores are not open yet: the server is starting", {"retry-after": "5"}
        )
    return store


class Context(Protocol):
    """The app as its handlers see it (`MeterApp` is the one implementation)."""

    engine: Engine | Unavailable | None
    keys: KeyStore | Unavailable | None
    billing: BillingCatalog | Unavailable | None
    invoices: InvoiceStore | Unavailable | None
    invoicer: Invoicer | Unavailable | None
    #: Why the server runs read-only (a full or read-only disk at startup), or None.
    degraded: str | None
    #: Payments and their providers (None until a writable start).
    payments: Payments | None
    #: Outgoing webhooks: the delivery worker's settings (whether private targets are allowed), and the worker
    #: (None when it does not run: a degraded start).
    webhook_settings: WebhookSettings
    webhooks: WebhookWorker | None
    #: The live account state (balances, entitlements), None when it does not run (a degraded start).
    live: Tracker | None
    #: Reservations against allowances and balances (None when they do not run: before startup, a degraded start).
    reservations: Reservations | None
    #: Backfills: a range's usage replaced whole (None before startup and on a degraded start).
    backfills: Backfills | None

    async def call(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """`fn(*args, **kwargs)` on the app's thread pool, off the event loop."""
        ...

    def metrics(self) -> str:
        """The Prometheus exposition of the server's counters."""
        ...

    def openapi_json(self) -> bytes:
        """The OpenAPI document, encoded (built once)."""
        ...
