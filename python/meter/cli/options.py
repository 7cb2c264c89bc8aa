"""The options several ``meter`` commands share, and the one way a command reaches a server.

- ``url_option``/``key_option``: the server's address and the API key, from the command line or ``METER_URL`` and
  ``METER_API_KEY``; a missing key is a usage error (exit 2) that says which key to give.
- ``data_dir_option``: the data directory of the commands that run without a server (``export``, ``maintain``);
  ``DATA_DIR`` is the default of every command that takes one, the same as ``meter serve``'s.
- ``retention_options``/``check_retention``: how long the engine keeps what (``serve``, ``maintain``).
- ``connect``: the ``meter.Client`` a command talks HTTP through; the CLI has no HTTP client of its own.

Invariants: an option means the same, with the same help text and default, in every command that takes it; nothing
here opens a store or sends a request.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from meter.client import Client

__all__ = [
    "DATA_DIR",
    "check_retention",
    "connect",
    "data_dir_option",
    "key_option",
    "retention_options",
    "url_option",
]

# `meter serve`, `meter demo` and `meter export` default to the same data directory (or METER_DATA_DIR).
DATA_DIR = Path(".meter-data")

# Commands that talk to a running server wait this long for an answer (an invoice run reads the export first).
TIMEOUT = 60.0


def retention_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how long the engine keeps what (`meter serve`, `meter maintain`)."""
    for option in reversed(
        [
            click.option(
                "--retention-days",
                type=click.FloatRange(min=0),
                default=None,
                help="days retained events are kept, then dropped once exported (default: back-dating window + 31 "
                "= 66)",
            ),
            click.option(
                "--minute-aggregates-days",
                type=click.FloatRange(min=0),
                default=None,
                help="days aggregates are kept per minute, then per hour (default 40; at least the back-dating "
                "window, 35)",
            ),
            click.option(
                "--hour-aggregates-days",
                type=click.FloatRange(min=0),
                default=None,
                help="days aggregates are kept per hour, then per UTC day (default 400)",
            ),
        ]
    ):
        f = option(f)
    return f


def check_retention(minute_aggregates_days: float | None, hour_aggregates_days: float | None) -> None:
    if minute_aggregates_days is not None and minute_aggregates_days < 35:
        raise click.BadParameter(
            "must be at least 35 days, the back-dating window: an event still accepted must never "
            "land in minutes already rolled up to hours",
            param_hint="--minute-aggregates-days",
        )
    if hour_aggregates_days is not None and hour_aggregates_days < (minute_aggregates_days or 40):
        raise click.BadParameter(
            f"must be at least --minute-aggregates-days ({minute_aggregates_days or 40})",
            param_hint="--hour-aggregates-days",
        )


# Commands that talk to a running server. The URL and key come from options or METER_URL / METER_API_KEY.
def _require_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if not value:
        raise click.UsageError(
            "no API key: set METER_API_KEY or pass --api-key (the operator key for `tenants` and "
            "`keys`, a tenant key otherwise)",
            ctx,
        )
    return value


url_option = click.option(
    "--url",
    envvar="METER_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="the server's address (or METER_URL)",
)
key_option = click.option("--api-key", envvar="METER_API_KEY", callback=_require_key, help="or METER_API_KEY")


def connect(url: str, api_key: str) -> Client:
    """The SDK client of a command that talks to the server at ``url`` (calls sent once, never retried)."""
    return Client(url, api_key, timeout=TIMEOUT)


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` of a command that works on an existing data directory without a server (or METER_DATA_DIR)."""
    return click.option(
        "--data-dir",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        envvar="METER_DATA_DIR",
        default=DATA_DIR,
        show_default=True,
        help="or METER_DATA_DIR",
    )(f)
