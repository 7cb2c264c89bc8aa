"""Revenue recognition (issue 16): when what was billed is earned, month by month, from the ledger.

- :mod:`~meter.money.revenue.schedule`: the ratable rule, how an amount billed for a service period is earned by day
  in the tenant's reporting time zone (each month rounded half to even, the last month taking the remainder).
- :mod:`~meter.money.revenue.mrr`: MRR and ARR by month with their movements, and usage revenue as its own run-rate,
  from finalized invoices.
- :mod:`~meter.money.revenue.retention`: net revenue retention by cohort month, from the same monthly figures.

This ``__init__`` imports nothing.
"""
