"""Revenue recognition (issue 16): when what was billed is earned, month by month, from the ledger.

- :mod:`~meter.money.revenue.schedule`: the ratable rule, how an amount billed for a service period is earned by day
  in the tenant's reporting time zone (each month rounded half to even, the last month taking the remainder).
- :mod:`~meter.money.revenue.due`: what recognition reads of an invoice, written with each change to it.
- :mod:`~meter.money.revenue.book`: the sub-ledger, what each source was billed and has recognized, as columns.
- :mod:`~meter.money.revenue.recognize`: the close, which posts what was earned exactly once.
- :mod:`~meter.money.revenue.mrr`: MRR and ARR by month with their movements, and usage revenue as its own run-rate,
  from finalized invoices.
- :mod:`~meter.money.revenue.retention`: net revenue retention by cohort month, from the same monthly figures.
- :mod:`~meter.money.revenue.days`: a report's days in the reporting time zone, and "as of" a day or an instant.
- :mod:`~meter.money.revenue.aging`: accounts-receivable aging at a date, from the journal (current, 1-30 ... 90+).

This ``__init__`` imports nothing.
"""
