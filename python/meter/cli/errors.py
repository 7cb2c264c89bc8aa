"""How every error of the ``meter`` command line reaches the user: one line on stderr, never a traceback.

``MeterGroup`` is the class of the ``meter`` group (and so of every group under it): whatever a command raises
becomes ``Error: <what happened>; <what to do>`` with a non-zero exit code, in one place. A bad command line (a
missing argument, an unknown option or command, a file that does not exist) exits 2 and says where the help is;
everything else exits 1 unless the command chose its own code. ``METER_DEBUG=1`` lets an unexpected exception
through with its traceback.

Invariants: the message of every exception is collapsed to one line (a server's multi-line message, an HTML error
page); ``_one_line`` knows every kind of error a command may let through (the SDK's ``ServerError`` with a hint per
status, ``httpx`` network errors, ``MeterError``, ``OSError``), and anything else is reported as a bug in meter.
This module only formats: it talks to no server and opens no store.
"""

from __future__ import annotations

import os
from typing import Any

import click
import httpx

from meter.client import ServerError
from meter.exceptions import MeterError

__all__ = ["MeterGroup", "OneLine"]

# Raised for `meter keys` without a subcommand: it shows the help, it is no error (click >= 8.2).
_SHOWS_HELP: tuple[type[click.UsageError], ...] = (
    (click.exceptions.NoArgsIsHelpError,) if hasattr(click.exceptions, "NoArgsIsHelpError") else ()
)


class MeterGroup(click.Group):
    """The ``meter`` group: whatever a command raises is shown as one line, with a non-zero exit code."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:  # `meter --bogus`
            raise _usage_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _usage_line(e) from None
        except click.ClickException as e:
            raise OneLine(e.format_message(), e.exit_code) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if os.environ.get("METER_DEBUG"):
                raise
            raise OneLine(_one_line(e)) from None


class OneLine(click.ClickException):
    """An error as one line: ``Error: <what happened>; <what to do>``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


def _usage_line(e: click.UsageError) -> click.ClickException:
    """Missing or bad arguments, a missing or unreadable file: one line that says where the help is."""
    if isinstance(e, _SHOWS_HELP):
        return e
    where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
    return OneLine(e.format_message().rstrip(".") + where, e.exit_code)


_STATUS_HINTS = {
    401: "check the key (METER_API_KEY or --api-key): it is wrong, revoked, or not a meter key",
    403: "use a key that may do this (the operator key for tenants and keys, a tenant key with the scope otherwise)",
    404: "check the name or id (`list` shows what exists)",
    409: "it exists already, or something still refers to it",
    413: "send less at once (for `ingest`: a smaller --batch-size)",
    429: "the server is busy: try again in a moment",
    503: "the server cannot take this now: try again, and see its log or /readyz",
}


def _one_line(e: BaseException) -> str:
    """What happened and what to do, for any exception a command lets through."""
    if isinstance(e, ServerError):
        hint = _STATUS_HINTS.get(e.status) or ("the server failed: its log says why" if e.status >= 500 else "")
        text = f"{e}; {hint}" if hint else str(e)
    elif isinstance(e, httpx.ConnectError):
        text = (
            f"cannot connect to {_address(e)} ({e}): is `meter serve` running there? Set METER_URL or --url to "
            "its address"
        )
    elif isinstance(e, httpx.TimeoutException):
        text = f"{_address(e)} did not answer in time ({type(e).__name__}): try again; see the server's log if it lasts"
    elif isinstance(e, httpx.HTTPError):
        text = f"talking to {_address(e)} failed: {type(e).__name__}: {e}"
    elif isinstance(e, MeterError) and e.code == "unavailable":  # the SDK gave up retrying
        text = f"{e.message}; is the server at METER_URL (or --url) running and healthy?"
    elif isinstance(e, MeterError):
        text = f"{e.message} ({e.code})"
    elif isinstance(e, OSError) and e.filename is not None:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = (
            f"unexpected {type(e).__name__}: {e}; this is a bug in meter: please report it "
            "(METER_DEBUG=1 shows the traceback)"
        )
    return "; ".join([text, *getattr(e, "__notes__", [])])


def _address(e: httpx.HTTPError) -> str:
    try:
        return str(e.request.url.copy_with(path="/", query=None))
    except RuntimeError:  # an error raised outside a request
        return "the server"
