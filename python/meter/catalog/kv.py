"""How Python opens and reads its rocksdict stores (keys, the billing catalog, invoices).

msgspec JSON values under a key prefix, stopping at the first key past it. A store opens read-write, or read-only for
a degraded start (a full or read-only disk): read-only writes nothing, and on a read-only file system, where
rocksdict cannot open even read-only (it writes its options file), it reads a temporary copy that ``close`` removes.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import msgspec
from rocksdict import AccessType, Rdict

__all__ = ["Store", "scan"]

T = TypeVar("T")


def scan(db: Rdict, prefix: bytes, type_: type[T], start: bytes | None = None) -> Iterator[T]:
    """The values of the keys under ``prefix``, in key order, from ``start`` (a key under it) when given."""
    for key, value in db.items(from_key=start or prefix):
        if not isinstance(key, bytes) or not key.startswith(prefix):
            break
        yield msgspec.json.decode(value, type=type_)


class Store:
    """A rocksdict store of msgspec values: read-write, or read-only (``read_only=True``) for a degraded start."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self._copy: Path | None = None
        if not read_only:
            Path(path).mkdir(parents=True, exist_ok=True)
            self._db = Rdict(os.fspath(path))
            return
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path} does not exist")
        try:
            self._db = Rdict(os.fspath(path), access_type=AccessType.read_only())
        except Exception as e:
            if "read-only file system" not in str(e).lower() and getattr(e, "errno", None) != errno.EROFS:
                raise
            self._copy = Path(tempfile.mkdtemp(prefix="meter-degraded-"))
            shutil.copytree(path, self._copy / "db", ignore=shutil.ignore_patterns("LOCK"))
            self._db = Rdict(os.fspath(self._copy / "db"), access_type=AccessType.read_only())

    def close(self) -> None:
        self._db.close()
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
