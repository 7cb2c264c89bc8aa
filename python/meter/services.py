"""The one owner of opening a data directory's stores: ``Stores``, shared by ``meter serve`` and the CLI.

A data directory holds four stores, each a RocksDB directory of its own (the ``Part``s):

- ``catalog/`` (``Part.KEYS``): ``meter.catalog.keys.KeyStore``, tenants and API key hashes;
- ``usage/`` (``Part.USAGE``): ``meter.engine.Engine``, events, dedup and aggregates;
- ``billing/`` (``Part.BILLING``): ``meter.catalog.billing.BillingCatalog``, customers, products, plans and
  subscriptions;
- ``invoices/`` (``Part.INVOICES``): ``meter.billing.store.InvoiceStore``, invoices, credit notes and their
  numbering.

``Stores.open`` opens the parts asked for (every part by default) in that order, read-write, and builds the
``Invoicer`` once the engine, the billing catalog and the invoices are all open (it holds the one lock that
serialises exports into the export directory, so there is exactly one per open ``Stores``). ``Stores.open_degraded``
is the server's read-only start on a full or read-only disk: the key store, the billing catalog and the invoices
open read-only; the engine (which writes as it opens) and so the invoicer are unavailable, and so is any store that
cannot open even read-only. ``Stores.open_or_degrade`` is the server's startup: read-write, or degraded when (and
only when) ``storage_full`` says the failure was a full or read-only disk.

Invariants:

- One process opens a data directory (RocksDB holds a lock per store): open it once, at startup (ASGI lifespan) or
  at the start of a command, never at import time, never across a fork.
- ``open`` either returns with every part asked for open, or raises ``OpenFailed`` (which part, where, why; the
  store's own error is its ``__cause__``) with nothing left open. A ``prepare_keys`` hook runs on the key store
  before the engine opens (the server checks or creates the operator key there); what it raises propagates as it
  is, after the same clean-up.
- A store is reached through its property (``keys``, ``engine``, ``billing``, ``invoices``, ``invoicer``), typed as
  the store itself. One that is unavailable (degraded) raises ``StoreUnavailable`` (``store_unavailable``, which the
  server answers 503 with ``Retry-After: StoreUnavailable.retry_after``); one that was not asked for is a bug in the
  caller and raises ``RuntimeError``. There is no ``None`` and no stand-in object to test for.
- ``close`` closes what was opened, in reverse order, every one even if another fails; it is idempotent.

This module never talks HTTP, never prints, and imports neither the server nor the CLI (both import it).
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from meter.billing.invoicer import Invoicer
from meter.billing.store import InvoiceStore
from meter.catalog.billing import BillingCatalog
from meter.catalog.keys import KeyStore
from meter.engine import Engine
from meter.exceptions import MeterError

__all__ = ["EVERY_PART", "OpenFailed", "Part", "StoreUnavailable", "Stores", "storage_full"]

_T = TypeVar("_T")


class _Closes(Protocol):
    def close(self) -> None: ...


class Part(enum.Enum):
    """A store of a data directory; its value is the directory's name inside the data directory."""

    KEYS = "catalog"
    USAGE = "usage"
    BILLING = "billing"
    INVOICES = "invoices"

    def path(self, data_dir: Path) -> Path:
        """Where this part lives in ``data_dir``."""
        return data_dir / self.value


#: Every part, in the order ``Stores.open`` opens them (the key store first: it authenticates everything else).
EVERY_PART: tuple[Part, ...] = (Part.KEYS, Part.USAGE, Part.BILLING, Part.INVOICES)

# The parts the invoicer is made of.
_INVOICING = frozenset({Part.USAGE, Part.BILLING, Part.INVOICES})


class OpenFailed(MeterError):
    """A store of the data directory could not be opened; nothing ``Stores.open`` opened stays open.

    The message is the store's own (so a caller that printed ``str(e)`` before prints the same), the ``code`` the
    store's when it has one; ``part`` and ``path`` say which store, ``__cause__`` is the store's exception, and
    ``in_use`` whether another process (a running ``meter serve``) holds its lock.
    """

    code = "store_open_failed"

    def __init__(self, part: Part, path: Path, cause: BaseException) -> None:
        super().__init__(str(cause), getattr(cause, "code", None) or self.code)
        self.part, self.path, self.cause = part, path, cause
        self.__cause__ = cause  # also when made without `raise ... from`: storage_full() reads the chain

    @property
    def in_use(self) -> bool:
        """True when the store's lock is held: RocksDB (and rocksdict) report that only in the message."""
        return "lock" in str(self.cause).lower()


class StoreUnavailable(MeterError):
    """What a degraded start could not open was asked for: a 503 ``store_unavailable``, to be retried later."""

    code = "store_unavailable"
    #: Seconds a client should wait before trying again (the server's ``Retry-After``).
    retry_after = 30


def storage_full(e: BaseException) -> str | None:
    """'disk full' or 'read-only file system' when ``e`` comes from one of them, else None.

    ``e`` is an ``OSError``, a RocksDB error that only has a message, or an ``OpenFailed`` around either: the whole
    ``__cause__``/``__context__`` chain is read. These are the failures a server can start through, degraded.
    """
    causes: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and len(causes) < 10:
        causes.append(link)
        link = link.__cause__ or link.__context__
    for cause in causes:
        number = getattr(cause, "errno", None)
        text = str(cause).lower()
        if number == errno.ENOSPC or "no space left on device" in text:
            return "disk full"
        if number == errno.EROFS or "read-only file system" in text:
            return "read-only file system"
    return None


class Stores:
    """The open stores of one data directory; make one with ``open``, ``open_degraded`` or ``open_or_degrade``.

    Use it as a context manager (or call ``close``): it closes exactly what it opened.
    """

    def __init__(self, data_dir: Path) -> None:
        """An empty set of stores: use the class methods, which open them."""
        self.data_dir = data_dir
        #: Why the stores are read-only (a degraded start), or None when they were opened read-write.
        self.degraded: str | None = None
        #: The stores a degraded start could not open even read-only, with why (the engine is never tried).
        self.failures: dict[Part, BaseException] = {}
        self._keys: KeyStore | None = None
        self._engine: Engine | None = None
        self._billing: BillingCatalog | None = None
        self._invoices: InvoiceStore | None = None
        self._invoicer: Invoicer | None = None
        self._asked: frozenset[Part] = frozenset()
        self._opened: list[Part] = []  # in opening order, for closing in reverse
        self._closed = False

    # Opening

    @classmethod
    def open(
        cls,
        data_dir: Path,
        parts: Collection[Part] = EVERY_PART,
        *,
        engine_options: Mapping[str, Any] | None = None,
        export_dir: Path | None = None,
        prepare_keys: Callable[[KeyStore], None] | None = None,
    ) -> Stores:
        """Opens ``parts`` of ``data_dir`` read-write (creating what does not exist yet), in ``EVERY_PART`` order.

        ``engine_options`` are ``meter.Engine``'s keyword arguments (retention, roll-ups, limits...). The invoicer,
        when the engine, the billing catalog and the invoices are all opened, exports to ``export_dir`` (default
        ``<data_dir>/export``). ``prepare_keys`` runs on the key store right after it opens, before the engine.
        Raises ``OpenFailed`` for a store that cannot open, with nothing left open.
        """
        stores = cls(data_dir)
        stores._asked = frozenset(parts)
        try:
            if Part.KEYS in stores._asked:
                stores._keys = stores._attempt(Part.KEYS, lambda path: KeyStore(path))
                if prepare_keys is not None:
                    prepare_keys(stores._keys)
            if Part.USAGE in stores._asked:
                options = dict(engine_options or {})
                stores._engine = stores._attempt(Part.USAGE, lambda path: Engine(path, **options))
            if Part.BILLING in stores._asked:
                # The catalog checks prices' meters against the engine, and deletes meters through it.
                meters = stores._engine
                stores._billing = stores._attempt(Part.BILLING, lambda path: BillingCatalog(path, meters=meters))
            if Part.INVOICES in stores._asked:
                stores._invoices = stores._attempt(Part.INVOICES, lambda path: InvoiceStore(path))
        except BaseException:
            stores._close_quietly()
            raise
        if stores._engine is not None and stores._billing is not None and stores._invoices is not None:
            out = export_dir if export_dir is not None else data_dir / "export"
            stores._invoicer = Invoicer(stores._engine, stores._billing, stores._invoices, out)
        return stores

    @classmethod
    def open_degraded(cls, data_dir: Path, reason: str, parts: Collection[Part] = EVERY_PART) -> Stores:
        """Opens what can be read without writing; ``reason`` says why the data directory is read-only.

        The key store, the billing catalog and the invoices open read-only; what cannot is recorded in ``failures``
        and unavailable, as are the engine (it writes as it opens) and the invoicer (it writes its export). Never
        raises for a store that cannot open.
        """
        stores = cls(data_dir)
        stores.degraded = reason
        stores._asked = frozenset(parts)
        stores._keys = stores._read_only(Part.KEYS, lambda path: KeyStore(path, read_only=True))
        stores._billing = stores._read_only(Part.BILLING, lambda path: BillingCatalog(path, read_only=True))
        stores._invoices = stores._read_only(Part.INVOICES, lambda path: InvoiceStore(path, read_only=True))
        return stores

    @classmethod
    def open_or_degrade(
        cls,
        data_dir: Path,
        *,
        engine_options: Mapping[str, Any] | None = None,
        export_dir: Path | None = None,
        prepare_keys: Callable[[KeyStore], None] | None = None,
    ) -> Stores:
        """The server's startup: every store read-write, or, on a full or read-only disk only, ``open_degraded``.

        The degraded reason is ``"<disk full|read-only file system> at startup: <the error>"``. Any other failure
        (of a store, or of ``prepare_keys``) is raised, with nothing left open.
        """
        try:
            return cls.open(data_dir, engine_options=engine_options, export_dir=export_dir, prepare_keys=prepare_keys)
        except Exception as e:  # noqa: BLE001 - only a full or read-only disk is survivable; the rest is re-raised
            reason = storage_full(e)
            if reason is None:
                raise
            return cls.open_degraded(data_dir, f"{reason} at startup: {e}")

    def _attempt(self, part: Part, open_: Callable[[Path], _T]) -> _T:
        path = part.path(self.data_dir)
        try:
            store = open_(path)
        except Exception as e:  # noqa: BLE001 - rocksdict reports a held lock or a full disk as a plain exception
            raise OpenFailed(part, path, e) from e
        self._opened.append(part)
        return store

    def _read_only(self, part: Part, open_: Callable[[Path], _T]) -> _T | None:
        if part not in self._asked:
            return None
        try:
            store = open_(part.path(self.data_dir))
        except Exception as e:  # noqa: BLE001 - that store stays unavailable; the rest is served
            self.failures[part] = e
            return None
        self._opened.append(part)
        return store

    # The stores

    @property
    def keys(self) -> KeyStore:
        """Tenants and API keys (``catalog/``)."""
        return self._need(Part.KEYS, self._keys)

    @property
    def engine(self) -> Engine:
        """The usage engine (``usage/``)."""
        return self._need(Part.USAGE, self._engine)

    @property
    def billing(self) -> BillingCatalog:
        """The billing catalog (``billing/``)."""
        return self._need(Part.BILLING, self._billing)

    @property
    def invoices(self) -> InvoiceStore:
        """The invoice store (``invoices/``)."""
        return self._need(Part.INVOICES, self._invoices)

    @property
    def invoicer(self) -> Invoicer:
        """The invoicing desk over the engine, the billing catalog and the invoices (one per open ``Stores``)."""
        for part in _INVOICING:
            self._need(part, self._store(part))
        assert self._invoicer is not None  # built by open() whenever its three parts are
        return self._invoicer

    def has(self, part: Part) -> bool:
        """Whether ``part`` is open (asked for, and not unavailable)."""
        return self._store(part) is not None

    def _store(self, part: Part) -> _Closes | None:
        stores: dict[Part, _Closes | None] = {
            Part.KEYS: self._keys,
            Part.USAGE: self._engine,
            Part.BILLING: self._billing,
            Part.INVOICES: self._invoices,
        }
        return stores[part]

    def _need(self, part: Part, store: _T | None) -> _T:
        if store is not None:
            return store
        if self._closed:
            raise RuntimeError(f"the stores of {self.data_dir} are closed")
        if self.degraded is not None and part in self._asked:
            raise StoreUnavailable(f"this needs a store that is unavailable: {self.degraded}")
        raise RuntimeError(f"the {part.value} store of {self.data_dir} was not opened: ask Stores.open for it")

    # Closing

    def close(self) -> None:
        """Closes what was opened, last opened first; every store is closed even if one fails (that error is raised)."""
        self._closed = True
        first: BaseException | None = None
        while self._opened:
            part = self._opened.pop()
            store = self._store(part)
            self._forget(part)
            try:
                if store is not None:
                    store.close()
            except BaseException as e:  # noqa: BLE001 - the others are closed all the same
                first = first or e
        if first is not None:
            raise first

    def _close_quietly(self) -> None:
        """Closes what a failed open opened: the open's error is the one to report, not a close's."""
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - closing what half-opened, maybe on a failed disk
            pass

    def _forget(self, part: Part) -> None:
        if part is Part.KEYS:
            self._keys = None
        elif part is Part.USAGE:
            self._engine = None
        elif part is Part.BILLING:
            self._billing = None
        else:
            self._invoices = None
        if part in _INVOICING:
            self._invoicer = None

    def __enter__(self) -> Stores:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
