"""A real NATS JetStream cluster on loopback for tests: N `nats-server` processes, routed to each other.

`make test` installs the Debian package `nats-server`; `binary()` is None where it is missing, so that a test can skip.
Each node keeps its config, JetStream store and log (its stderr, appended to across restarts) in `<dir>/<name>/`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import nats

T = TypeVar("T")

#: How long `start()` and `restart()` wait for the cluster to be ready before they give up.
READY_TIMEOUT = 30.0


def binary() -> str | None:
    """The path of `nats-server`: Debian installs it in /usr/sbin, which is not on a non-root user's PATH."""
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None
    )


def free_ports(n: int) -> list[int]:
    """N distinct free loopback ports (all held open together, so the kernel cannot hand out one twice)."""
    # Not http_server.free_port: that module imports meter, which a NATS-only test does not need built.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class _Node:
    def __init__(self, name: str, dir: Path, ports: list[int]) -> None:
        self.name = name
        self.dir = dir
        # The http port is the monitoring one: /healthz, /routez and /jsz tell when the node is ready.
        self.client_port, self.cluster_port, self.http_port = ports
        self.config = dir / "nats.conf"
        self.log_path = dir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def write_config(self, peers: list[_Node]) -> None:
        routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers if p is not self)
        self.config.write_text(
            f"""server_name: {self.name}
listen: 127.0.0.1:{self.client_port}
http: 127.0.0.1:{self.http_port}
jetstream {{
  store_dir: "{self.dir / "store"}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: meter-test
  listen: 127.0.0.1:{self.cluster_port}
  routes: [{routes}]
}}
"""
        )

    def spawn(self, exe: str) -> None:
        # The log is nats-server's stderr rather than its `log_file`, so that a Go panic lands in it too.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [exe, "-c", str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )

    def signal(self, sig: signal.Signals, timeout: float | None = None) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class NatsCluster:
    """`size` nodes named n0, n1, ... in cluster "meter-test", JetStream on, stores under `dir`.

    Nothing runs until `start()` (or `with NatsCluster(...) as cluster:`). Ports are chosen once, so a restarted node
    comes back at the same address with the same store.
    """

    def __init__(self, dir: Path, size: int = 3) -> None:
        exe = binary()
        if exe is None:
            raise RuntimeError("nats-server is not installed (`make test` installs the Debian package nats-server)")
        self.exe = exe
        ports = free_ports(3 * size)
        self.nodes = [_Node(f"n{i}", Path(dir) / f"n{i}", ports[3 * i : 3 * i + 3]) for i in range(size)]
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            node.write_config(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All the nodes' URLs in one comma-separated string, for a setting that takes a server list as text."""
        return ",".join(self.urls)

    def start(self) -> None:
        """Start every node, then wait until JetStream has a meta leader and every node is routed to every other."""
        try:
            for node in self.nodes:
                node.spawn(self.exe)
            self._wait_ready(self.nodes)
        except BaseException:
            self.close()  # no nats-server left behind by a cluster that never came up
            raise

    def kill(self, i: int) -> None:
        """SIGKILL node i: a crash, nothing flushed and no leadership handed over."""
        self.nodes[i].signal(signal.SIGKILL)

    def stop(self, i: int) -> None:
        """SIGTERM node i and wait for it to exit (SIGKILL if it takes longer than 15 s)."""
        self.nodes[i].signal(signal.SIGTERM, timeout=15)

    def restart(self, i: int) -> None:
        """Start node i again (stopping it first if it runs) on its config and store; wait until it is caught up."""
        node = self.nodes[i]
        if node.running:
            self.stop(i)
        node.spawn(self.exe)
        self._wait_ready([node])

    def close(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGKILL)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log_tails(self, lines: int = 40) -> str:
        """The end of every node's log, for the message of a failure."""
        return "\n".join(f"--- {n.name} ({n.log_path}):\n{n.log_tail(lines)}" for n in self.nodes)

    def _wait_ready(self, nodes: list[_Node]) -> None:
        """Wait until each of `nodes` is healthy, routed to every running node and answers JetStream requests."""
        deadline = time.monotonic() + READY_TIMEOUT
        reason = "not checked yet"
        while time.monotonic() < deadline:
            for node in nodes:
                if not node.running:
                    raise RuntimeError(f"nats-server {node.name} exited\n{self.log_tails()}")
            reason = self._not_ready(nodes)
            if not reason:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the NATS cluster was not ready in {READY_TIMEOUT:.0f} s: {reason}\n{self.log_tails()}")

    def _not_ready(self, nodes: list[_Node]) -> str:
        """Why `nodes` are not ready yet, or "" once they are."""
        peers = sum(n.running for n in self.nodes) - 1
        with httpx.Client(timeout=2) as http:
            for node in nodes:
                base = f"http://127.0.0.1:{node.http_port}"
                try:
                    # /healthz is 200 only once the node has a meta leader and its streams' replicas are current:
                    # after a restart this means it has caught up, not just that it listens.
                    health = http.get(f"{base}/healthz")
                    if health.status_code != 200:
                        return f"{node.name} /healthz: {health.status_code} {health.text.strip()}"
                    routes = int(http.get(f"{base}/routez").json()["num_routes"])
                    if routes < peers:
                        return f"{node.name} has {routes} routes of {peers}"
                    leader = http.get(f"{base}/jsz").json().get("meta_cluster", {}).get("leader")
                    if not leader:
                        return f"{node.name} knows no JetStream meta leader"
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    return f"{node.name} monitoring: {e!r}"
        # The monitoring endpoints are the server's view; a client's request through each node is the proof.
        for node in nodes:
            try:
                _run(_account_info(node.url))
            except (nats.errors.Error, OSError) as e:  # OSError covers TimeoutError
                return f"{node.name} JetStream account info: {e!r}"
        return ""


async def _quiet(_: Exception) -> None:
    """An error callback that drops them: the probe's failures are retried, not logged."""


async def _account_info(url: str) -> None:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=_quiet)
    try:
        await nc.jetstream(timeout=2).account_info()
    finally:
        await nc.close()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # In a thread of its own, so that the probe also works when called from a test's running event loop.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
