"""Payments: what settles an invoice, who collects it, and what happens when collecting fails.

- :mod:`~meter.money.payments.records`: the records (payments with their refunds, collection attempts, settings)
  and the bodies of the API;
- :mod:`~meter.money.payments.provider`: the ``PaymentProvider`` interface; :mod:`~meter.money.payments.stripe`
  implements it with the official ``stripe`` SDK;
- :mod:`~meter.money.payments.collect`: manual payments, outcomes of automatic ones, refunds, write-offs, each in one
  :meth:`~meter.billing.store.InvoiceStore.transaction`;
- :mod:`~meter.money.payments.dunning`: automatic collection, its retry schedule and the scheduled job;
- :mod:`~meter.money.payments.webhook`: Stripe's events, verified and applied once each.

Keys in the invoices store (``<tenant>`` first, like every money record):

=============================================  ===================================================================
``payment/<tenant>/<id>``                      a :class:`~records.Payment` (``pay_000001``), its refunds inside
``payment_invoice/<tenant>/<invoice>/<id>``    index: an invoice's payments
``payment_intent/<tenant>/<pi>``               index: the payment a Stripe PaymentIntent made (applied once)
``attempt/<tenant>/<invoice>/<n:04d>``         an :class:`~records.Attempt`: every collection attempt, its outcome
``collect/<tenant>/<invoice>``                 a :class:`~records.Collection`: an invoice being collected (dunning)
``stripe_event/<tenant>/<evt>``                a Stripe event applied (its id, once)
``dunning/<tenant>``                           the tenant's :class:`~records.DunningSettings`
``payment_settings/<tenant>``                  the tenant's :class:`~records.PaymentSettings` (Stripe keys)
=============================================  ===================================================================

Exactly once (design.md §8): a payment's record, the invoice's new amounts and status, its journal entry and its
events are one synced batch. A call to Stripe is made only after the attempt that names its idempotency key
(``meter-<tenant>-<invoice>-<n>``) was written, and a pending attempt is completed by replaying that key, never by
a new attempt: a server killed between the call and recording its outcome never charges twice.
"""
