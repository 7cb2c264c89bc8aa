"""``meter ingest``: send a file of events (NDJSON or a JSON array) through ``Client.ingest``, in batches.

Invariants: nothing is sent unless the whole file reads (UTF-8, valid JSON, an object per event); an event without
an ``id`` gets one derived from the file's bytes and its place in it (``read_events``), so that ingesting the same
file again counts nothing twice; a batch without a definite answer is retried a few times only (``INGEST_RETRY``),
then the command stops, says how many events were answered, and running it again is safe. stdout is the summary
alone (the progress bar and the per-event problems go to stderr); exit code 1 when an event was rejected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec
from rich.console import Console
from rich.progress import Progress

from meter.cli.options import key_option, url_option
from meter.client import Client, RetryPolicy
from meter.exceptions import MeterError
from meter.schemas import EventIssue, EventWarning

__all__ = ["INGEST_RETRY", "ingest", "read_events"]

# `meter ingest` tries a batch that gets no definite answer (network error, 429, 5xx) 4 times, at most 2 s apart, then
# stops: a server that is down is reported within seconds (the SDK's default policy waited 17.6 s, then a traceback).
INGEST_RETRY = RetryPolicy(attempts=4, base_delay=0.25, max_delay=2.0)


def read_events(file: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of FILE, and where each one is in it ("line 3", or "event 3" of a JSON array).

    An event without an ``id`` gets one derived from the file: ``<the first 32 hex digits of the SHA-256 of the
    file's bytes>-<n>``, n being the event's line in an NDJSON file or its position (from 1) in a JSON array, so
    that ingesting the same file again is all duplicates. Nothing is sent unless the whole file reads.
    """
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:32]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{file}: not UTF-8 text (byte {e.start}); nothing was sent") from None
    items: list[tuple[int, str, Any]] = []  # (n for the id, where, event)
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            raise click.ClickException(
                f"{file}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}); nothing was sent"
            ) from None
        items = [(n, f"event {n}", item) for n, item in enumerate(array, 1)]
    else:
        # Lines end at "\n" only: str.splitlines() would also split at characters JSON strings may hold (U+2028).
        for lineno, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    items.append((lineno, f"line {lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise click.ClickException(
                        f"{file}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                        "one event per line; nothing was sent"
                    ) from None
    events, places = [], []
    for n, where, item in items:
        if not isinstance(item, dict):
            raise click.ClickException(
                f"{file}: {where}: an event is a JSON object, not {type(item).__name__}; nothing was sent"
            )
        item.setdefault("id", f"{digest}-{n}")
        events.append(item)
        places.append(where)
    return events, places


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@url_option
@key_option
def ingest(file: Path, batch_size: int, url: str, api_key: str) -> None:
    """Sends the events of FILE (a JSON array or NDJSON) in batches and prints a summary.

    An event without an `id` gets one derived from the file: the first 32 hex digits of the SHA-256 of the file's
    bytes, a dash, and the event's line (NDJSON) or position from 1 (JSON array). Ingesting the same file again
    therefore counts nothing twice (every event is a duplicate); a file that changed is a new file, so give events
    their own ids if a file grows between runs.

    A batch without a definite answer (network error, 429, 5xx) is tried 4 times, at most 2 s apart; then the
    command stops and says how many events were answered, and running it again is safe.
    """
    events, places = read_events(file)
    accepted = duplicates = done = 0
    issues: list[EventIssue] = []
    warnings: list[EventWarning] = []
    try:
        # The progress bar goes to stderr, so that stdout is the summary alone.
        with (
            Client(url, api_key, retry=INGEST_RETRY) as client,
            Progress(console=Console(stderr=True), transient=True) as progress,
        ):
            task = progress.add_task("ingesting", total=len(events))
            for start in range(0, len(events), batch_size):
                chunk = events[start : start + batch_size]
                result = client.ingest(chunk, check=False)
                issues += [msgspec.structs.replace(i, index=i.index + start) for i in result.issues]
                warnings += [msgspec.structs.replace(w, index=w.index + start) for w in result.warnings]
                accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
                done += len(chunk)
                progress.advance(task, len(chunk))
    except (MeterError, httpx.HTTPError) as e:
        e.add_note(
            f"{done} of {len(events)} events were answered before it stopped; running the same command again "
            "is safe (events keep their ids)"
        )
        raise
    click.echo(
        f"{len(events)} events: {accepted} accepted, {duplicates} duplicates, {len(issues)} rejected"
        + (f"; a meter skipped {len(warnings)} accepted events" if warnings else "")
    )
    for issue in issues[:20]:
        click.echo(f"  {file}: {places[issue.index]} ({issue.id}): {issue.code}: {issue.message}", err=True)
    if len(issues) > 20:
        click.echo(f"  ... and {len(issues) - 20} more", err=True)
    # Accepted and counted by the other meters: a warning, not a failure (GET /v1/meters/{slug}/skipped lists them).
    for warning in warnings[:20]:
        click.echo(
            f"  {file}: {places[warning.index]} ({warning.id}): meter {warning.meter} skipped it: "
            f"{warning.code}: {warning.message}",
            err=True,
        )
    if len(warnings) > 20:
        click.echo(f"  ... and {len(warnings) - 20} more skipped", err=True)
    if issues:
        raise SystemExit(1)
