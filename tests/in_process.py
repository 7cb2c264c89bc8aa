"""The app in this process, for tests that drive both its HTTP API and a function the server does not expose yet.

Requests go through the ASGI app itself (httpx's ASGI transport), so they take the real route, auth and error paths;
the test can meanwhile call the app's stores and the live state's functions directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from meter.catalog.keys import KeyStore, Scope
from meter.server.app import MeterApp


class InProcess:
    """A started app and a tenant's key; ``request`` answers like ``httpx.Client.request``."""

    def __init__(self, app: MeterApp, tenant: str, scopes: list[Scope]) -> None:
        self.app, self.tenant = app, tenant
        keys = app.keys
        assert isinstance(keys, KeyStore)
        keys.create_tenant(tenant)
        self.key, _ = keys.create_key(tenant, scopes)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]
            headers = {"authorization": f"Bearer {self.key}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://meter", headers=headers) as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(run())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@contextmanager
def started(data_dir: Path, tenant: str = "acme") -> Iterator[InProcess]:
    app = MeterApp(data_dir)
    app.startup()
    try:
        yield InProcess(app, tenant, ["ingest", "read", "admin"])
    finally:
        app.shutdown()
