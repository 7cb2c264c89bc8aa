"""The HTTP front the peers sit behind: granian and a plain ASGI app, like `meter serve`.

Only the storage path differs. The body is read whole and handed to `Peer.ingest` on a thread pool (as meter's server
hands it to the engine); msgspec decodes it inside the peer.

Run by bench_peers.py: `python benches/peers/front.py NAME DATA_DIR PORT`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec

JSON = [(b"content-type", b"application/json")]


class Front:
    def __init__(self, name: str, data_dir: Path) -> None:
        from peers import load

        self.peer = load(name)
        self.data_dir = data_dir
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="peer-call")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        self.data_dir.mkdir(parents=True, exist_ok=True)
                        self.peer.open(self.data_dir)
                    except Exception as e:  # noqa: BLE001 - reported to granian, which then refuses to start
                        await send({"type": "lifespan.startup.failed", "message": repr(e)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.peer.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        status, answer = await self.route(scope, body)
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": msgspec.json.encode(answer)})

    async def route(self, scope: dict[str, Any], body: bytes) -> tuple[int, Any]:
        loop = asyncio.get_running_loop()
        path, method = scope["path"], scope["method"]
        if method == "POST" and path == "/v1/events":
            accepted, duplicates = await loop.run_in_executor(self.pool, self.peer.ingest, body)
            return 200, {"accepted": accepted, "duplicates": duplicates}
        if method == "GET" and path == "/usage":
            q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
            start, end = datetime.fromisoformat(q["from"]), datetime.fromisoformat(q["to"])
            return 200, await loop.run_in_executor(self.pool, self.peer.usage, q["customer"], start, end)
        if method == "GET" and path == "/readyz":
            return 200, {"status": "ready"}
        return 404, {"code": "not_found"}


def create_app() -> Front:
    return Front(os.environ["PEER_NAME"], Path(os.environ["PEER_DATA_DIR"]))


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces

    name, data_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ.update(PEER_NAME=name, PEER_DATA_DIR=data_dir)
    # granian's worker imports this module by name: make `peers` importable there, forked or spawned.
    benches = str(Path(__file__).parent.parent)
    sys.path.insert(0, benches)
    os.environ["PYTHONPATH"] = os.pathsep.join([benches, os.environ.get("PYTHONPATH", "")])
    Granian(
        "peers.front:create_app",
        factory=True,
        interface=Interfaces.ASGI,
        address="127.0.0.1",
        port=port,
        workers=1,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
