"""The live account state of customers: balances, entitlements, spend, alerts and reservations (issue 15)."""
