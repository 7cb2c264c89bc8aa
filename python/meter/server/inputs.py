"""Reading what a client sends: JSON bodies into msgspec Structs, and query parameters into values.

The route table (`table.py`) names, for each route, the body type and the query parameters it takes; the router
calls the readers here with them. A handler receives values, never raw text.

Invariants:
- Bad input is a 400 whose message names the parameter or field, what is allowed and what was received; never a
  500, never a silent default for something malformed.
- A JSON body is refused when a key appears twice in one object (msgspec would keep the last), and numbers are
  never parsed as floats on the way (no size limit, no rounding).
- A single-valued query parameter given twice is a 400 (`Request.param`), never last-wins.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec

from meter.server.errors import ApiError
from meter.server.http import Request

__all__ = ["BOOLEANS", "decode", "parse_bool", "parse_time", "read_filters", "read_limit"]

#: Spellings of a boolean query parameter (case-insensitive); anything else is a 400.
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def decode(body: bytes, type_: type[Any], code: str = "invalid_body") -> Any:
    """The body as ``type_``; a body that does not match it is a 400 ``code`` (the catalog's: ``invalid_catalog``)."""
    try:
        value = msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as e:
        raise ApiError(400, code, f"the body does not match the schema: {e}") from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    # A key given twice is refused, never last-wins (msgspec keeps the last). Numbers stay text: no int-size limit.
    try:
        json.loads(body, object_pairs_hook=_unique_keys, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e}") from None
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise ApiError(400, "invalid_json", f"the key {k!r} appears twice in one object; give it once")
        seen.add(k)
    return dict(pairs)


def parse_time(value: str | None, name: str) -> datetime:
    """A required RFC 3339 instant with an offset (or Z)."""
    if not value:
        raise ApiError(400, "invalid_query", f"'{name}' is required, as RFC 3339 such as 2026-11-01T00:00:00Z")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_query", f"'{name}' must be RFC 3339 such as 2026-11-01T00:00:00Z; got {value!r}"
        ) from None
    if t.tzinfo is None:
        raise ApiError(400, "invalid_query", f"'{name}' needs a time zone offset or Z; got {value!r}")
    return t


def parse_bool(value: str | None, name: str) -> bool:
    """A boolean query parameter: absent is false; true/false, 1/0, yes/no in any case; anything else a 400."""
    if value is None:
        return False
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ApiError(
            400, "invalid_query", f"'{name}' must be true or false (or 1/0, yes/no); got {value!r}"
        ) from None


def read_limit(request: Request, name: str) -> int:
    """A page size: absent or empty is 100; not a whole number is a 400 (its range the reader checks)."""
    limit = request.param(name) or "100"
    if not (limit.isascii() and limit.isdigit()):
        raise ApiError(400, "invalid_query", f"'{name}' must be a whole number 1-1000; got {limit!r}")
    return int(limit)


def read_filters(request: Request, name: str) -> dict[str, list[str]]:
    """``name[KEY]=VALUE`` parameters (an OpenAPI deepObject), each key's values in the order given."""
    filters: dict[str, list[str]] = {}
    prefix = f"{name}["
    for k, v in request.query:
        if k.startswith(prefix) and k.endswith("]"):
            filters.setdefault(k[len(prefix) : -1], []).append(v)
    return filters
