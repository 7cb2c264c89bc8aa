"""Where every file of the export lives: the one place the lake's paths are spelled.

The export (the "lake") is a directory ``<out>`` of hive-partitioned Parquet that finance tools and pricing read,
never RocksDB::

    <out>/usage/tenant=<tenant>/meter=<slug>/date=<YYYY-MM-DD>/part-0.parquet     one file per meter and UTC day
    <out>/usage/tenant=<tenant>/_exported.json                                     {"<meter id>/<day>": events}
    <out>/usage/tenant=<tenant>/meter=<slug>/date=<YYYY-MM-DD>/part-p<n>.parquet  a cluster: one per partition too
    <out>/usage/tenant=<tenant>/_exported-p<n>.json                                each partition's own manifest
    <out>/events/tenant=<tenant>/date=<YYYY-MM-DD>/part-<first>-<last>.parquet    commits first..last (20 digits)
    <out>/events/tenant=<tenant>/_exported.json                                    {"after_seq": last commit}
    <out>/catalog/tenant=<tenant>/{customers,prices,subscriptions,meters}.parquet
    <out>/catalog/tenant=<tenant>/_exported.json                                   {"sequence": catalog sequence}
    <out>/invoices/tenant=<tenant>/{invoices,invoice_lines,credit_notes}.parquet
    <out>/invoices/tenant=<tenant>/.run/{invoices,invoice_lines}.parquet           an invoice run's rows, in passing
    <out>/ledger/tenant=<tenant>/journal_lines.parquet                              one row per journal line
    <out>/revenue/tenant=<tenant>/recognized.parquet                                the closes' rows

Invariants:

- Names starting with ``.`` or ``_`` (:data:`HIDDEN_PREFIXES`: manifests, a crash's ``.name.tmp``, the ``.run``
  directory) are bookkeeping: every reader skips them (pyarrow does by default, polars is told to), so a dataset
  directory read whole holds the data files only.
- No escaping: a partition value is taken as it is, and only when it needs none (:func:`partition`): letters,
  digits, ``-`` and ``_`` (the tenant ids the key store creates, and the engine's meter slugs). Anything else, ``/``
  or ``=`` or ``..`` above all, is refused (``InvalidInput``) rather than written where it would read back as
  another tenant's, or outside ``<out>``. A path therefore always reads back (hive partitioning) to the id it was
  written from.
- The layout knows nothing of the files' contents: the dataset modules (:mod:`meter.lake.usage`, ``events``,
  ``catalog``, ``invoices``, ``ledger``, ``revenue``) own those, and :mod:`meter.lake.files` writes them.

This module must never be bypassed by writing ``"tenant="`` or a dataset's name by hand anywhere else: the layout
changes here, once, or not at all.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from meter.exceptions import InvalidInput

__all__ = [
    "HIDDEN_PREFIXES",
    "MANIFEST",
    "catalog_file",
    "catalog_root",
    "catalog_tenant",
    "events_cited",
    "events_file",
    "events_leftovers",
    "events_root",
    "events_tenant",
    "fresh_dir",
    "invoices_file",
    "invoices_root",
    "invoices_tenant",
    "ledger_file",
    "ledger_root",
    "ledger_tenant",
    "manifest",
    "partition",
    "usage_day_file",
    "usage_meter",
    "usage_meter_dirs",
    "usage_part",
    "usage_root",
    "usage_tenant",
]

#: Prefixes of names that are not data: readers skip them.
HIDDEN_PREFIXES = (".", "_")
#: Beside each tenant's files: what was last written (each dataset says what it keeps in it).
MANIFEST = "_exported.json"

_SAFE = re.compile(r"[A-Za-z0-9_-]{1,255}")


def partition(key: str, value: str) -> str:
    """One hive path segment ``key=value``; ``value`` must need no escaping (see the module's invariants)."""
    if _SAFE.fullmatch(value) is None:
        raise InvalidInput(
            f"{key} {value!r} cannot name an export directory: it must be 1-255 letters, digits, '-' or '_'",
            code=f"invalid_{key}",
        )
    return f"{key}={value}"


def manifest(directory: Path, log_partition: int | None = None) -> Path:
    """What was last written into ``directory``; a cluster's partitions each keep their own (``_exported-p<n>``)."""
    return directory / (MANIFEST if log_partition is None else f"_exported-p{log_partition}.json")


# usage


def usage_root(out: Path) -> Path:
    return Path(out) / "usage"


def usage_tenant(out: Path, tenant: str) -> Path:
    return usage_root(out) / partition("tenant", tenant)


def usage_meter(out: Path, tenant: str, meter: str) -> Path:
    """A meter's days: the directory a scan of its usage reads (``date`` is its one partition column)."""
    return usage_tenant(out, tenant) / partition("meter", meter)


def usage_day_file(out: Path, tenant: str, meter: str, day: date, log_partition: int | None = None) -> Path:
    """A meter's usage on ``day``: one file, or in a cluster one per log partition (their customers never overlap)."""
    return usage_meter(out, tenant, meter) / f"date={day:%Y-%m-%d}" / usage_part(log_partition)


def usage_part(log_partition: int | None) -> str:
    """A day's file name: ``part-0.parquet`` on one node, ``part-p<n>.parquet`` from a cluster's log partition."""
    return "part-0.parquet" if log_partition is None else f"part-p{log_partition}.parquet"


def usage_meter_dirs(out: Path, tenant: str) -> dict[str, Path]:
    """The meters that have a directory, by slug (including meters deleted since they were written)."""
    base = usage_tenant(out, tenant)
    if not base.is_dir():
        return {}
    return {path.name.removeprefix("meter="): path for path in base.glob("meter=*")}


# raw events


def events_root(out: Path) -> Path:
    return Path(out) / "events"


def events_tenant(out: Path, tenant: str) -> Path:
    """A tenant's raw events: the directory a scan reads (``date``, the event's UTC day, is its partition column)."""
    return events_root(out) / partition("tenant", tenant)


def events_file(out: Path, tenant: str, day: date, first: int, last: int) -> Path:
    """The events of commits ``first``..``last`` (inclusive) whose time falls on ``day`` (UTC)."""
    return events_tenant(out, tenant) / f"date={day.isoformat()}" / f"part-{first:020d}-{last:020d}.parquet"


def events_leftovers(out: Path, tenant: str, first: int) -> list[Path]:
    """Files of a page starting at commit ``first`` (a crash left them before the manifest said so)."""
    return sorted(events_tenant(out, tenant).glob(f"date=*/part-{first:020d}-*.parquet"))


def corrections_tenant(out: Path, tenant: str) -> Path:
    """A tenant's corrections of raw events: which exported versions no longer count (``meter.lake.events``)."""
    return Path(out) / "corrections" / partition("tenant", tenant)


def corrections_file(out: Path, tenant: str, first: int, last: int) -> Path:
    """The corrections made by commits ``first``..``last`` (inclusive)."""
    return corrections_tenant(out, tenant) / f"part-{first:020d}-{last:020d}.parquet"


def corrections_leftover(out: Path, tenant: str, first: int) -> list[Path]:
    """Corrections files of a page starting at commit ``first`` (a crash left them before the manifest said so)."""
    return sorted(corrections_tenant(out, tenant).glob(f"part-{first:020d}-*.parquet"))


def events_cited(tenant: str) -> str:
    """How an invoice line names the raw events it billed (``events/tenant=<t>``), relative to any ``<out>``.

    Part of the text stored in invoices: it must not change for invoices already written.
    """
    return f"events/tenant={tenant}"


# catalog snapshot


def catalog_root(out: Path) -> Path:
    return Path(out) / "catalog"


def catalog_tenant(out: Path, tenant: str) -> Path:
    return catalog_root(out) / partition("tenant", tenant)


def catalog_file(out: Path, tenant: str, name: str) -> Path:
    """``name``: ``customers``, ``prices``, ``subscriptions`` or ``meters``."""
    return catalog_tenant(out, tenant) / f"{name}.parquet"


# invoices


def invoices_root(out: Path) -> Path:
    return Path(out) / "invoices"


def invoices_tenant(out: Path, tenant: str) -> Path:
    return invoices_root(out) / partition("tenant", tenant)


def invoices_file(out: Path, tenant: str, name: str) -> Path:
    """``name``: ``invoices``, ``invoice_lines`` or ``credit_notes``."""
    return invoices_tenant(out, tenant) / f"{name}.parquet"


def fresh_dir(out: Path, tenant: str) -> Path:
    """Where an invoice run writes its drafts' rows before the invoices export takes them (hidden: ``.run``)."""
    return invoices_tenant(out, tenant) / ".run"


# ledger


def ledger_root(out: Path) -> Path:
    return Path(out) / "ledger"


def ledger_tenant(out: Path, tenant: str) -> Path:
    return ledger_root(out) / partition("tenant", tenant)


def ledger_file(out: Path, tenant: str) -> Path:
    """The tenant's journal, one row per line of every entry (:mod:`meter.lake.ledger`)."""
    return ledger_tenant(out, tenant) / "journal_lines.parquet"


def revenue_root(out: Path) -> Path:
    return Path(out) / "revenue"


def revenue_file(out: Path, tenant: str) -> Path:
    """The rows of the tenant's closes: what each source recognized in which month (:mod:`meter.lake.revenue`)."""
    return revenue_root(out) / partition("tenant", tenant) / "recognized.parquet"
