"""The operator's routes (`/v1/admin/*`): tenants, and keys of any tenant (or operator keys).

Only an operator key reaches them (`auth.py` enforces it for every /v1/admin/* path, whatever the table says).
Invariants: a key's secret is in the answer that creates it and nowhere else (the store keeps a hash); the last
operator key cannot be revoked (409 `last_operator_key`), so the installation never locks its operator out.
"""

from __future__ import annotations

import msgspec

from meter.catalog.keys import ApiKey, KeyBody, Tenant, TenantBody
from meter.server.context import Context, opened
from meter.server.http import Answer, Request
from meter.server.models import CreatedKey, Revoked
from meter.server.table import TEXT, Body, Param, PathParam, Route

__all__ = ["ROUTES"]


async def create_tenant(ctx: Context, request: Request, body: TenantBody) -> Answer:
    return 201, await ctx.call(opened(ctx.keys).create_tenant, body.id, body.name), {}


async def list_tenants(ctx: Context, request: Request) -> Answer:
    return 200, await ctx.call(opened(ctx.keys).list_tenants), {}


async def create_key(ctx: Context, request: Request, body: KeyBody) -> Answer:
    """The operator creates a key for any tenant, or (`"tenant": null`) another operator key."""
    secret, record = await ctx.call(opened(ctx.keys).create_key, body.tenant, list(body.scopes))
    return 201, {"key": secret, **msgspec.structs.asdict(record)}, {}


async def list_keys(ctx: Context, request: Request, tenant: str | None) -> Answer:
    return 200, await ctx.call(opened(ctx.keys).list_keys, tenant), {}


async def revoke_key(ctx: Context, request: Request, key_id: str) -> Answer:
    await ctx.call(opened(ctx.keys).revoke, key_id, operator=True)
    return 200, {"revoked": key_id}, {}


KEY_ID = PathParam("key_id", description="The key's id (`display` shows its first characters)")

ROUTES = [
    Route(
        "POST",
        "/v1/admin/tenants",
        "operator",
        create_tenant,
        "Create a tenant",
        status=201,
        returns=Tenant,
        body=Body(TenantBody),
        errors=(409,),
    ),
    Route("GET", "/v1/admin/tenants", "operator", list_tenants, "List tenants", returns=list[Tenant]),
    Route(
        "POST",
        "/v1/admin/keys",
        "operator",
        create_key,
        "Create a key of a tenant, or (`tenant: null`) an operator key (the secret is shown once)",
        status=201,
        returns=CreatedKey,
        body=Body(KeyBody),
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/admin/keys",
        "operator",
        list_keys,
        "List keys (never their secrets)",
        returns=list[ApiKey],
        params=(Param("tenant", TEXT, "Only this tenant's keys"),),
    ),
    Route(
        "DELETE",
        "/v1/admin/keys/{key_id}",
        "operator",
        revoke_key,
        "Revoke any key but the last operator key (409 last_operator_key)",
        returns=Revoked,
        path_params=(KEY_ID,),
        errors=(409,),
    ),
]
