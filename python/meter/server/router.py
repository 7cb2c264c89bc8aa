"""The router: the route table compiled into path matchers, and the 404 and 405 answers.

Invariants:
- A template parameter `{name}` matches one whole, non-empty path segment (`[^/]+`); every other character of a
  template matches itself (only `.` needs escaping in the paths the table allows).
- Routes are tried in table order and the first whose method and path both match wins.
- A path that matches no route is a 404 `not_found`; a path some route matches with another method is a 405
  `method_not_allowed` with `Allow` (RFC 9110 15.5.6). A literal path (`/v1/invoices/run`) has its own methods,
  not those of a template it also fits (`/v1/invoices/{invoice_id}`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from meter.server.errors import ApiError
from meter.server.table import Handler, Route

__all__ = ["Compiled", "Router", "pattern_of"]


def pattern_of(path: str) -> re.Pattern[str]:
    """``/v1/meters/{slug}/usage`` -> ``/v1/meters/(?P<slug>[^/]+)/usage``."""
    return re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path.replace(".", "\\.")))


class Compiled(NamedTuple):
    """A route as the router matches it."""

    method: str
    pattern: re.Pattern[str]
    route: Route
    handler: Handler


class Router:
    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = [Compiled(r.method, pattern_of(r.path), r, r.handler) for r in routes]

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route serving ``method path`` and its path arguments; else a 405 or 404 ApiError."""
        for compiled in self.routes:
            if compiled.method == method and (found := compiled.pattern.fullmatch(path)):
                return compiled.route, found.groupdict()
        matching = [(c.method, c.pattern.groups == 0) for c in self.routes if c.pattern.fullmatch(path)]
        # A literal path (/v1/invoices/run) has its own methods, not those of the template it also fits.
        allowed = sorted({m for m, literal in matching if literal} or {m for m, _ in matching})
        if allowed:  # RFC 9110 15.5.6: a 405 says which methods the path has
            raise ApiError(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                {"allow": ", ".join(allowed)},
            )
        raise ApiError(404, "not_found", f"no route {path}; see /openapi.json")
