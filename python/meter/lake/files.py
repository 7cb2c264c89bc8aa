"""Atomic file writes for the lake: the one place a file of the export is created or replaced.

Every file goes the same way (:func:`replace`): written under a hidden temporary name beside its final one
(``.<name>.tmp``), fsynced, renamed over the old file, and then its directory fsynced. Whatever a crash interrupts,
the path holds the old file or the new one, complete, never a torn one; a reader (which skips hidden names, see
:data:`meter.lake.layout.HIDDEN_PREFIXES`) never sees the temporary, and the next write of the same path replaces a
temporary a crash left behind.

Parquet is written with zstd, a table at once or a stream a batch (row group) at a time (:func:`write_parquet`);
manifests are small JSON documents (:func:`write_manifest`, :func:`read_manifest`), written after the files they
describe, so that a crash in between means writing those files again, never trusting files that are not there.

Never write a file of the export with ``open``/``pq.write_table`` elsewhere: the durability promise is kept here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["COMPRESSION", "ExportSummary", "read_manifest", "replace", "write_bytes", "write_manifest", "write_parquet"]

#: The export's Parquet compression.
COMPRESSION: Literal["zstd"] = "zstd"

T = TypeVar("T")


class ExportSummary(msgspec.Struct):
    """What one export of one dataset did, over the tenants asked for."""

    files: int = 0
    rows: int = 0
    #: Files (or days) left as they were: nothing changed in them since they were last written.
    unchanged: int = 0


def write_parquet(data: pa.Table | pa.RecordBatchReader, path: Path) -> int:
    """Writes a table, or a stream batch by batch (each a row group), atomically; returns the rows written."""
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        if isinstance(data, pa.Table):
            pq.write_table(data, tmp, compression=COMPRESSION)
            rows = data.num_rows
            return
        with pq.ParquetWriter(tmp, data.schema, compression=COMPRESSION) as writer:
            for batch in data:
                writer.write_batch(batch)
                rows += batch.num_rows

    replace(path, write)
    return rows


def write_bytes(data: bytes, path: Path) -> None:
    replace(path, lambda tmp: tmp.write_bytes(data))


def write_manifest(value: object, path: Path) -> None:
    """A manifest (JSON), atomically: write it after the files it speaks of."""
    write_bytes(msgspec.json.encode(value), path)


def read_manifest(path: Path, kind: type[T], default: T) -> T:
    """The manifest at ``path`` as ``kind``, or ``default`` when there is none (nothing was written yet)."""
    if not path.exists():
        return default
    return msgspec.json.decode(path.read_bytes(), type=kind)


def replace(path: Path, write: Callable[[Path], object]) -> None:
    """Puts at ``path`` the file that ``write`` writes at the temporary path it is given, atomically and durably.

    ``write`` may also move a finished file to the temporary path (``os.replace``): it is fsynced all the same.
    """
    # The temporary name starts with a dot, so Parquet readers skip one a crash leaves behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
