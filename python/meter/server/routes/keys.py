"""A tenant's own keys (`/v1/keys`): an `admin` key of the tenant creates, lists and revokes keys of its tenant.

Invariants: the tenant is the calling key's, never one named in the body; another tenant's key (or an operator
key) is a 404 here, as if it did not exist; a secret is shown once, in the answer that creates it.
"""

from __future__ import annotations

import msgspec

from meter.catalog.keys import ApiKey, TenantKeyBody
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.models import CreatedKey, Revoked
from meter.server.routes.admin import KEY_ID
from meter.server.table import Body, Route

__all__ = ["ROUTES"]


async def create_own_key(ctx: Context, request: Request, body: TenantKeyBody) -> Answer:
    """A tenant's `admin` key creates keys of its own tenant (the tenant comes from the key, never the body)."""
    secret, record = await ctx.call(opened(ctx.keys).create_key, request.tenant, list(body.scopes))
    return 201, {"key": secret, **msgspec.structs.asdict(record)}, {}


async def list_own_keys(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.keys).list_keys, request.tenant), {}


async def revoke_own_key(ctx: Context, request: Request, key_id: str) -> Answer:
    # Another tenant's key (or an operator's) is a 404.
    await ctx.call(opened(ctx.keys).revoke, key_id, tenant=request.tenant)
    return 200, {"revoked": key_id}, {}


ROUTES = [
    Route(
        "POST",
        "/v1/keys",
        "admin",
        create_own_key,
        "Create a key of the caller's tenant (the secret is shown once)",
        status=201,
        returns=CreatedKey,
        body=Body(TenantKeyBody),
    ),
    Route(
        "GET",
        "/v1/keys",
        "admin",
        list_own_keys,
        "List the caller's tenant's keys (never their secrets)",
        returns=list[ApiKey],
    ),
    Route(
        "DELETE",
        "/v1/keys/{key_id}",
        "admin",
        revoke_own_key,
        "Revoke a key of the caller's tenant (another tenant's key is a 404)",
        returns=Revoked,
        path_params=(KEY_ID,),
    ),
]
