"""A private event loop on a thread of its own, where an edge's NATS client lives.

The HTTP routes run their store calls on the server's thread pool and expect plain functions (``Context.call``); the
cluster's edge and keys are coroutines of the NATS client. ``Runner`` runs them on its loop and waits for the result,
so that a route calls the cluster as it calls an engine. A NATS failure (a node down, an election under way) becomes
``ClusterUnavailable``, a 503 to retry: never a 500.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats.errors
import nats.js.errors

from meter.exceptions import MeterError

__all__ = ["ClusterUnavailable", "Runner"]

T = TypeVar("T")


#: The failures of the cluster itself, not answers: a key not found is an answer (the caller's to handle).
UNAVAILABLE = (
    TimeoutError,  # nats.errors.TimeoutError is one
    ConnectionError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class ClusterUnavailable(MeterError):
    """The cluster could not answer now (a worker taking a partition over, a NATS node down): retry shortly (503)."""

    code = "cluster_unavailable"


class Runner:
    def __init__(self, name: str = "meter-cluster") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def __call__(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()
        except UNAVAILABLE as e:
            raise ClusterUnavailable(f"the NATS cluster did not answer ({e!r}); retry shortly") from e

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
