"""Money moves: tax, payments, the ledger and outgoing webhooks (the lead owns this package's layout)."""
