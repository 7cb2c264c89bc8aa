"""How Python reads its rocksdict stores (keys, the billing catalog, invoices).

msgspec JSON values under a key prefix, stopping at the first key past it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import msgspec
from rocksdict import Rdict

__all__ = ["scan"]

T = TypeVar("T")


def scan(db: Rdict, prefix: bytes, type_: type[T]) -> Iterator[T]:
    for key, value in db.items(from_key=prefix):
        if not isinstance(key, bytes) or not key.startswith(prefix):
            break
        yield msgspec.json.decode(value, type=type_)
