"""The lake: the export's files, the one owner of every export path and file format.

meter's engine keeps usage in RocksDB; everything downstream (pricing, invoicing, finance tools) reads the export
instead: hive-partitioned Parquet (zstd) under one directory ``<out>``. Five datasets, one module each, each with its
write and its read:

- :mod:`~meter.lake.usage`: each meter's per-minute usage per customer and day (``export_usage``, ``scan``);
- :mod:`~meter.lake.events`: the raw events, the long-term record retention relies on (``export_events``, ``scan``);
- :mod:`~meter.lake.catalog`: the catalog snapshot pricing works from (``export_catalog``, ``refresh_catalog``,
  ``load_snapshot``, ``read_meters``);
- :mod:`~meter.lake.invoices`: invoices, lines and credit notes, derived from the invoices store
  (``export_invoices``, ``FreshWriter``, ``read_invoices``);
- :mod:`~meter.lake.ledger`: every journal line, derived from the invoices store's journal (``export_ledger``,
  ``read_ledger``; ``csv_bytes`` for the same rows as CSV).

Beside them, :mod:`~meter.lake.layout` spells every path (the only place ``tenant=…/meter=…/date=…`` is written) and
:mod:`~meter.lake.files` writes every file (atomically: tmp, fsync, rename, directory fsync).

Invariants: a reader sees the old file or the new one, never a torn one; names starting with ``.`` or ``_`` are
bookkeeping that readers skip; each export writes only what changed since the last one and gives the same rows for
the same data; the lake never writes to the stores it reads (the engine is only told which raw events are written).

This ``__init__`` imports nothing, so that importing one dataset module (pricing needs the usage scan alone) does not
pull in the others and their dependencies.
"""
