"""A meter cluster for tests: `meter worker` and `meter serve --cluster` processes over a `NatsCluster`.

Every process logs to `<dir>/<name>.log` (appended to across restarts); `log_tails` gives their ends for a failing
test's report.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nats.errors
from nats_cluster import NatsCluster, free_ports

METER = str(Path(sys.executable).with_name("meter"))
READY_TIMEOUT = 60.0


class Process:
    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.args, self.log, self.env = name, args, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            # A session of its own: a signal goes to the whole group (granian's worker processes too), never leaving an
            # orphan serving the port or reconnecting for ever.
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if sig != signal.SIGKILL:  # what the group's leader left behind (granian's worker, if it outlived it)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class MeterCluster:
    """Workers and edges of one cluster. Nothing runs until `start_worker` and `start_edge`."""

    def __init__(
        self, dir: Path, nats: NatsCluster, partitions: int = 4, lease_ttl: float = 5.0, checkpoint_every: float = 5.0
    ) -> None:
        self.dir, self.nats, self.partitions = dir, nats, partitions
        self.lease_ttl, self.checkpoint_every = lease_ttl, checkpoint_every
        #: The usage dataset every worker exports its partitions into (every 2 s, and on `meter cluster export`).
        self.lake = dir / "lake"
        self.env = os.environ | {"METER_CLUSTER": nats.url, "METER_OUTCOME_WAIT": "2"}
        self.workers: dict[str, Process] = {}
        self.edges: dict[str, Process] = {}
        self.ports: dict[str, int] = {}

    def start_worker(self, name: str) -> Process:
        args = [METER, "worker", "--id", name, "--data-dir", str(self.dir / name), "--partitions", str(self.partitions)]
        args += ["--lease-ttl", str(self.lease_ttl), "--checkpoint-every", str(self.checkpoint_every)]
        args += ["--export-dir", str(self.lake), "--export-every", "2"]
        worker = self.workers.get(name) or Process(name, args, self.dir / f"{name}.log", self.env)
        self.workers[name] = worker
        worker.start()
        return worker

    def start_edge(self, name: str) -> str:
        """Starts (or restarts, on the same port) an edge; returns its base URL once it answers."""
        port = self.ports.setdefault(name, free_ports(1)[0])
        edge = self.edges.get(name) or Process(
            name, [METER, "serve", "--port", str(port)], self.dir / f"{name}.log", self.env
        )
        self.edges[name] = edge
        edge.start()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if not edge.running or time.monotonic() > deadline:
                raise RuntimeError(f"edge {name} did not start:\n{edge.tail()}")
            time.sleep(0.2)

    def url(self, edge: str) -> str:
        return f"http://127.0.0.1:{self.ports[edge]}"

    def key(self, tenant: str, *scopes: str) -> str:
        return self.key_and_id(tenant, *scopes)[0]

    def key_and_id(self, tenant: str, *scopes: str) -> tuple[str, str]:
        """A new key's secret (`meter cluster key`'s stdout) and its id (named on its stderr)."""
        args = [METER, "cluster", "key", "--tenant", tenant] + [a for s in scopes for a in ("--scope", s)]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip(), done.stderr.split()[2]

    def cli(self, *args: str) -> str:
        done = subprocess.run([METER, *args], env=self.env, capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    def settled(self, timeout: float = 180.0, balanced: bool = False) -> dict[int, int]:
        """Waits until every partition has an owner that applied the whole log; returns each partition's position.

        With ``balanced``, also until every running worker holds partitions (the shares settled: no hand-back to come).
        """
        return asyncio.run(self._settled(timeout, balanced))

    async def _settled(self, timeout: float, balanced: bool) -> dict[int, int]:
        from meter.cluster.settings import STREAM, ask_subject, connect, subject
        from nats.js.errors import NotFoundError

        cluster = await connect(self.nats.url, "meter-test")
        deadline = time.monotonic() + timeout
        try:
            while True:
                positions: dict[int, int] = {}
                running = sum(w.running for w in self.workers.values())
                try:
                    for p in range(self.partitions):
                        try:
                            last = (await cluster.js.get_last_msg(STREAM, subject(p))).seq or 0
                        except NotFoundError:
                            last = 0  # nothing in the partition's log
                        reply = await cluster.nc.request(ask_subject(p), b'{"op":"position","tenant":""}', timeout=2)
                        position = int(json.loads(reply.data)["position"])
                        if position < last:
                            break
                        positions[p] = position
                    if len(positions) == self.partitions and (not balanced or await self._balanced(cluster, running)):
                        return positions
                except (nats.errors.Error, TimeoutError):
                    pass  # no owner yet, or the cluster electing leaders (a node restarted): ask again
                if time.monotonic() > deadline:
                    raise AssertionError(f"the cluster did not settle in {timeout} s: {positions}\n{self.tails()}")
                await asyncio.sleep(0.3)
        finally:
            await cluster.close()

    async def _balanced(self, cluster: Any, running: int) -> bool:
        from meter.cluster.leases import Leases

        owners = await Leases(cluster.js, cluster.leases, "meter-test").owners()
        return len(owners) == self.partitions and len(set(owners.values())) == min(running, self.partitions)

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in [*self.workers.values(), *self.edges.values()])

    def close(self) -> None:
        for process in [*self.edges.values(), *self.workers.values()]:
            process.signal(signal.SIGKILL)


def post(url: str, key: str, path: str, body: Any, timeout: float = 60.0) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=timeout)


def get(url: str, key: str, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.get(url + path, params=params, headers={"authorization": f"Bearer {key}"}, timeout=60)
