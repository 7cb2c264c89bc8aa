"""Who applies which partition: leases in JetStream's key-value store, and the workers' heartbeats beside them.

A lease is the key ``p<partition>`` holding the owner's id. It is taken by creating the key (compare-and-set: only
when absent), kept by updating it at its last revision, and lost when an update finds another revision: the bucket's
TTL expires a key that was not renewed, so a dead worker's partitions are free after one TTL. A worker that cannot
renew stops applying, answering and checkpointing the partition (``worker``), so at most one worker answers for a
partition once its lease has expired.

Heartbeats (``w-<id>``) let workers count each other and share the partitions evenly.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from meter.cluster.settings import LEASES, bucket_keys

__all__ = ["Leases"]


class Leases:
    def __init__(self, js: JetStreamContext, kv: KeyValue, owner: str) -> None:
        self.js, self.kv, self.owner = js, kv, owner

    async def acquire(self, partition: int) -> int | None:
        """Takes the partition's lease if nobody holds it: its revision, else None."""
        try:
            return await self.kv.create(_key(partition), self.owner.encode())
        except BadRequestError:  # held by someone (KeyWrongLastSequenceError)
            return None

    async def renew(self, partition: int, revision: int) -> int | None:
        """Keeps a held lease: the new revision, or None when it was lost (expired, then taken or not)."""
        try:
            return await self.kv.update(_key(partition), self.owner.encode(), last=revision)
        except BadRequestError:
            return None

    async def release(self, partition: int, revision: int) -> None:
        """Gives a held lease up at once, so another worker need not wait for it to expire."""
        try:
            await self.kv.delete(_key(partition), last=revision)
        except (BadRequestError, NotFoundError):
            pass  # lost meanwhile

    async def heartbeat(self) -> None:
        await self.kv.put(f"w-{self.owner}", b"")

    async def workers(self) -> list[str]:
        """The workers alive (a heartbeat within the TTL), this one included."""
        return sorted({k[2:] for k in await self._keys() if k.startswith("w-")} | {self.owner})

    async def owners(self) -> dict[int, str]:
        """Each held partition's owner."""
        owners = {}
        for key in await self._keys():
            if key.startswith("p"):
                try:
                    entry = await self.kv.get(key)
                except NotFoundError:  # released (a delete marker) or expired meanwhile
                    continue
                owners[int(key[1:])] = (entry.value or b"").decode()
        return owners

    async def _keys(self) -> list[str]:
        return await bucket_keys(self.js, LEASES)


def _key(partition: int) -> str:
    return f"p{partition}"
