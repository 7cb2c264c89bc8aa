"""What the ``meter`` commands print besides one-line messages: tables (rich, on stdout) and server warnings.

Invariants: a table shows values as the server sent them (``str`` of the JSON value; a missing or null value is an
empty cell), with ``value`` and ``events`` right-aligned; warnings go to stderr, so that stdout stays the result.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
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


def write_pages(out: str, pages: Iterable[bytes]) -> int:
    """CSV pages (each with its header) as one file with one header, or to stdout for ``-``; the pages written.

    The file is written beside its path and renamed once whole: an error halfway leaves no file that looks complete.
    """
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    sink = sys.stdout.buffer if out == "-" else tmp.open("wb")  # noqa: SIM115 - closed below
    count = 0
    try:
        for page in pages:
            sink.write(page if count == 0 else page.split(b"\r\n", 1)[1])  # the header once
            count += 1
    except BaseException:
        if sink is not sys.stdout.buffer:
            sink.close()
            tmp.unlink(missing_ok=True)
        raise
    if sink is not sys.stdout.buffer:
        sink.close()
        os.replace(tmp, path)
    return count
