"""Checkpoints of a partition's engine in JetStream's object store, so that another worker can take it over.

A checkpoint is a RocksDB checkpoint of the partition's engine (``Engine.checkpoint``: consistent, with its log
position inside), as a zstd-compressed tar, stored as the object ``p<partition>``; the object's description is the
position, so a worker can tell whether it is newer than what it has without fetching it. An object store put
replaces the previous checkpoint only once the new one is whole.
"""

from __future__ import annotations

import asyncio
import shutil
import tarfile
import tempfile
from pathlib import Path

import zstandard
from nats.js import api
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from meter.engine import Engine

__all__ = ["position", "restore", "save"]

#: A restore that has not finished in this many seconds, plus one per `RESTORE_MIN_BYTES_PER_S` of checkpoint, is
#: abandoned (TimeoutError) and tried again.
RESTORE_BASE_S = 30.0
RESTORE_MIN_BYTES_PER_S = 5_000_000


def _name(partition: int) -> str:
    return f"p{partition}"


async def save(store: ObjectStore, partition: int, engine: Engine, log_position: int, scratch: Path) -> None:
    """Stores a checkpoint of ``engine`` (applied through ``log_position``) as the partition's newest."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, ignore_cleanup_errors=True) as tmp:
        archive = Path(tmp) / "checkpoint.tar.zst"
        await asyncio.to_thread(_pack, engine, Path(tmp) / "db", archive)
        with archive.open("rb") as data:
            meta = api.ObjectMeta(name=_name(partition), description=str(log_position))
            await store.put(_name(partition), data, meta=meta)


async def position(store: ObjectStore, partition: int) -> int | None:
    """The log position of the partition's newest checkpoint, None when it has none."""
    try:
        info = await store.get_info(_name(partition))
    except NotFoundError:
        return None
    return int(info.description or 0)


async def restore(store: ObjectStore, partition: int, dest: Path, scratch: Path) -> bool:
    """Replaces ``dest`` with the partition's newest checkpoint; False (``dest`` untouched) when it has none.

    ``scratch`` must be on the same file system as ``dest`` (the checkpoint is unpacked there, then renamed).
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, ignore_cleanup_errors=True) as tmp:
        archive = Path(tmp) / "checkpoint.tar.zst"
        try:
            info = await store.get_info(_name(partition))
            with archive.open("wb") as out:
                # nats-py reads the chunks from a push consumer with no deadline, and one can stop delivering when a
                # NATS node restarts: bounded, so that the worker's lease round goes on (and tries again).
                timeout = RESTORE_BASE_S + (info.size or 0) / RESTORE_MIN_BYTES_PER_S
                await asyncio.wait_for(store.get(_name(partition), writeinto=out), timeout)
        except NotFoundError:
            return False
        await asyncio.to_thread(_unpack, archive, Path(tmp) / "db", dest)
    return True


def _pack(engine: Engine, db: Path, archive: Path) -> None:
    engine.checkpoint(db)
    with archive.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
        with tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(db, arcname="db")


def _unpack(archive: Path, unpacked: Path, dest: Path) -> None:
    with archive.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as data:
        with tarfile.open(fileobj=data, mode="r|") as tar:
            tar.extractall(unpacked.parent, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    unpacked.rename(dest)
