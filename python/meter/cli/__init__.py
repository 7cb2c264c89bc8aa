"""The ``meter`` command line: the ``main`` group, made of one module per topic.

Layout (each module holds its commands, registered on ``main`` here; none imports another topic's module):

- ``serve``: ``meter serve``, the HTTP API in granian (``--cluster``: an edge of a cluster);
- ``cluster``: ``meter worker`` and ``meter cluster`` (a cluster's workers, keys and state);
- ``tenants``: ``meter tenants`` and ``meter keys`` (the operator key);
- ``meters``: ``meter meters`` and ``meter usage``;
- ``events``: ``meter ingest``;
- ``catalog``: ``meter catalog`` (customers, products, plans, subscriptions);
- ``invoices``: ``meter invoice``;
- ``webhooks``: ``meter webhooks`` (endpoints, events, deliveries, replays);
- ``tax``: ``meter tax`` (tax rates, the seller's tax settings);
- ``ledger``: ``meter ledger`` (journal entries, trial balance, customers' balances, CSV export);
- ``live``: ``meter balance`` and ``meter entitlements`` (a customer's live credit balance and access);
- ``revenue``: ``meter revenue`` (the month-end close, revenue reports, the GL export);
- ``payments``: ``meter payments`` (manual payments, refunds, collection attempts, dunning, Stripe settings);
- ``export``: ``meter export`` (Parquet, from a data directory with no server running);
- ``admin``: ``meter admin-key`` and ``meter maintain`` (a data directory's operator keys, retention, roll-ups);
- ``demo``: ``meter demo``;
- shared: ``errors`` (every error as one line), ``options`` (the options several commands share, ``connect``),
  ``output`` (tables, warnings).

Invariants: commands that talk to a server do so only through ``meter.Client`` (``options.connect``, and
``Client.ingest`` for events); commands that work on a data directory open it only through
``meter.services.Stores``, the same owner the server uses. Every error reaches the user as one line on stderr (what
happened, and what to do) with a non-zero exit code, never a traceback: ``MeterGroup.invoke`` turns every exception
a command raises into that line, in one place (``METER_DEBUG=1`` shows the traceback of an unexpected one).
"""

from __future__ import annotations

import click

# The modules, not their commands: a command named like its module (serve, export, demo) would hide the module.
from meter.cli import (
    admin,
    catalog,
    cluster,
    demo,
    events,
    export,
    invoices,
    ledger,
    live,
    meters,
    payments,
    revenue,
    serve,
    tax,
    tenants,
    webhooks,
)
from meter.cli.errors import MeterGroup

__all__ = ["main"]


@click.group(cls=MeterGroup)
def main() -> None:
    """meter: exact, durable usage metering.

    Commands that talk to a server read its address from METER_URL (or --url) and the key from METER_API_KEY (or
    --api-key): the operator key for `tenants` and `keys`, a tenant key for the rest. Errors are one line on stderr,
    with exit code 1 (2 for a bad command line).
    """


for _command in (
    serve.serve,
    admin.admin_key_group,
    admin.maintain,
    tenants.tenants,
    tenants.keys,
    meters.meters,
    meters.usage,
    events.ingest,
    catalog.catalog,
    invoices.invoice,
    webhooks.webhooks,
    tax.tax,
    ledger.ledger,
    live.balance,
    live.entitlements,
    payments.payments,
    revenue.revenue,
    export.export,
    demo.demo,
    cluster.worker,
    cluster.cluster,
):
    main.add_command(_command)
