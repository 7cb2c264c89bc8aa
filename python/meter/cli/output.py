"""What the ``meter`` commands print besides one-line messages: tables (rich, on stdout) and server warnings.

Invariants: a table shows values as the server sent them (``str`` of the JSON value; a missing or null value is an
empty cell), with ``value`` and ``events`` right-aligned; warnings go to stderr, so that stdout stays the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

__all__ = ["table", "warn"]


def table(title: str, rows: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
    """Prints ``columns`` of ``rows`` as a table titled ``title``."""
    out = Table(title=title)
    for c in columns:
        out.add_column(c, justify="right" if c in ("value", "events") else "left")
    for row in rows:
        out.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(out)


def warn(answer: Mapping[str, Any]) -> None:
    """The ``warnings`` of a server's answer (``{"code", "message"}`` each), one line each on stderr."""
    for warning in answer.get("warnings", []):
        click.echo(f"warning: {warning['code']}: {warning['message']}", err=True)
