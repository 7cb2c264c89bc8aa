"""Money moves: what happens to an invoice once it is finalized, and who hears of it.

- :mod:`~meter.money.ledger`: the double-entry ledger (accounts, the entry every money event posts, balances);
- :mod:`~meter.money.events`: the outgoing event types and the outbox record;
- :mod:`~meter.money.tax`: tax rates, the tax providers (built-in from the catalog; Stripe Tax), tax per line;
- :mod:`~meter.money.payments`: payments, the payment providers (Stripe), dunning, refunds;
- :mod:`~meter.money.webhooks`: tenants' webhook endpoints and the delivery of the outbox to them.

Invariant (design.md §8): every money event is written exactly once, in the same synced write batch as the state
change that causes it, with its journal entry and its outgoing event: that batch is
:meth:`meter.billing.store.InvoiceStore.transaction`. Amounts are ``Decimal``, rounded half to even to the
currency's minor unit where they are computed. This ``__init__`` imports nothing.
"""
