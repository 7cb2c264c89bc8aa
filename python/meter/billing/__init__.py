"""Billing: the application that turns rated usage into invoices and keeps them.

:mod:`meter.pricing` is the pure maths (frames in, frames out); this package is everything around it that has state,
time or files:

- :mod:`~meter.billing.cycles`: billing cycles in the customer's time zone, segments and proration by local day;
- :mod:`~meter.billing.usage`: a period's quantities per charge, read from the usage export (the one reader of it);
- :mod:`~meter.billing.keys`: the typed key of what an invoice line bills, and its one text encoding;
- :mod:`~meter.billing.billed`: what finalized invoices billed (per key, per grant), read in one pass of the store;
- :mod:`~meter.billing.terms`: the lines commits, discounts and credits add to an invoice;
- :mod:`~meter.billing.invoices`: invoices and credit notes as data (the structs, their lifecycle, their checks);
- :mod:`~meter.billing.store`: the invoice store (rocksdict, ``<data>/invoices``), which owns
  numbering (``INV-000001``, ``CN-000001``: sequential, gapless, written in the same synced batch as what they number);
- :mod:`~meter.billing.invoicing`: a period's run, threshold invoices and the upcoming invoice, per subscription;
- :mod:`~meter.billing.batch`: the same period run over whole tables for plain subscriptions (same bytes);
- :mod:`~meter.billing.invoicer`: ties these to a data directory (export, snapshot, store) for the server and CLI.

Invariants: billing never reads RocksDB's usage (only the export), never rates by itself (it calls
:func:`meter.pricing.rate`), and every amount it stores was rounded once, half to even, to the currency's minor unit
(:mod:`meter.pricing.money`); totals are sums of rounded lines. This ``__init__`` imports nothing, so that a module
which needs only the invoice types (the export, say) does not pull in the invoicer, which imports the export.
"""
