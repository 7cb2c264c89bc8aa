"""Outgoing webhooks: a tenant's money events, delivered to its endpoints, signed the Standard Webhooks way.

The lead's outbox (``outbox/<tenant>/<seq>`` in the invoices store, written in the same synced batch as the state
change that emits the event) is the source; this package delivers it, at least once, and keeps the log:

- ``endpoints``: the registered endpoints and their signing secrets (shown once);
- ``signing``: Standard Webhooks v1 signatures;
- ``guard``: the outbound URL check (https, public addresses only), at registration and at every attempt;
- ``deliveries``: the per (event, endpoint) delivery state, fan-out, the retry queue, the log, replays;
- ``delivery``: the worker that sends them (backoff with full jitter for up to 3 days, then ``failing``);
- ``records``: the key layout in the invoices store (``endpoint/<tenant>/...``, ``delivery/<tenant>/...``).

The routes are ``meter.server.routes.webhooks``; the CLI ``meter webhooks``.
"""
