"""Authentication and authorization: which key a request carries, and whether its route allows it. Deny by default.

Invariants:
- A public route outside /v1/ or under /v1/webhooks/ (inbound webhooks, authenticated by their signature) needs no
  key; every other route needs a valid key in `Authorization: Bearer ...`
  (401 with `WWW-Authenticate` otherwise). Two Authorization headers are a 400, never last-wins.
- /v1/admin/* and /metrics need an operator key (one that belongs to no tenant), whatever the table says; an
  operator key reaches nothing else (403 `tenant_only`), so an operator never reads or changes a tenant's data.
- Every other route needs a key of a tenant with the route's scope (403 `forbidden`); the tenant a handler works
  on is always the key's (`Request.tenant`), never one named in the request.
- The key lookup is done before a byte of the body is read, so an unauthenticated client makes the server read and
  decompress nothing. A key authenticated before is found in the key store's memory (emptied by every write to a
  key, so a revocation takes effect at once); any other lookup (a rocksdict read) runs on the thread pool.
"""

from __future__ import annotations

from meter.catalog.keys import ApiKey
from meter.server.context import Context
from meter.server.errors import ApiError
from meter.server.http import Request
from meter.server.table import Access

__all__ = ["authorize"]


async def authorize(ctx: Context, request: Request, access: Access) -> ApiKey | None:
    """The key of `request`, allowed on a route with `access`; None for a public route that needs none."""
    path = request.path
    # Inbound webhooks (/v1/webhooks/...) are public: their sender signs them, and the route verifies the signature.
    if access == "public" and (not path.startswith("/v1/") or path.startswith("/v1/webhooks/")):
        return None
    header = request.headers.get("authorization") or ""
    secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
    keys = ctx.keys
    key: ApiKey | None = None
    if secret and keys:
        # A key seen before is found in memory, on the loop; only an unknown one costs a disk read on the pool.
        key = keys.known(secret) or await ctx.call(keys.authenticate, secret)
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "send a valid API key as 'Authorization: Bearer mk_live_...'",
            {"www-authenticate": "Bearer"},
        )
    if access == "operator" or path.startswith("/v1/admin/"):
        if not key.operator:
            raise ApiError(
                403,
                "operator_only",
                f"{path} is for the operator of the installation; a tenant's "
                "key cannot use it (a tenant manages its own keys with /v1/keys)",
            )
        return key
    if key.operator:
        raise ApiError(
            403,
            "tenant_only",
            "an operator key reaches only /v1/admin/* and /metrics; use a key of "
            'the tenant (POST /v1/admin/keys {"tenant": ..., "scopes": [...]})',
        )
    if access not in key.scopes:
        raise ApiError(403, "forbidden", f"this key lacks the '{access}' scope")
    return key
