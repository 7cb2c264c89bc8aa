"""``meter webhooks``: a tenant's webhook endpoints, the events sent to them, the delivery log and replays, over HTTP.

``meter webhooks create URL`` prints the endpoint's signing secret: it is shown this once (``rotate-secret`` makes a
new one). Deliveries follow Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``); verify
them with the ``standardwebhooks`` or ``svix`` library and that secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from meter.cli.options import connect, key_option, url_option
from meter.cli.output import table

__all__ = ["webhooks"]

_ENDPOINT_COLUMNS = ["id", "url", "status", "types", "description", "created_at"]
_DELIVERY_COLUMNS = ["event", "type", "endpoint", "status", "attempts", "last_status", "last_error", "next_attempt_at"]


def _types(types: Any) -> str:
    return "all" if types is None else ", ".join(types)


def _endpoints(title: str, rows: list[dict[str, Any]]) -> None:
    table(title, [{**r, "types": _types(r["types"])} for r in rows], _ENDPOINT_COLUMNS)


def _more(page: dict[str, Any]) -> None:
    if page.get("next"):
        click.echo(f"more: --after {page['next']}")


@click.group()
def webhooks() -> None:
    """Webhook endpoints (an admin key to change them, a read key to look), events, deliveries, replays."""


@webhooks.command("create")
@click.argument("endpoint_url")
@click.option("--type", "types", multiple=True, help="an event type it receives (repeatable; none: every type)")
@click.option("--description", default="", help="what it is for")
@click.option("--disabled", is_flag=True, help="register it disabled (nothing is sent until it is enabled)")
@url_option
@key_option
def webhooks_create(
    endpoint_url: str, types: tuple[str, ...], description: str, disabled: bool, url: str, api_key: str
) -> None:
    """Registers ENDPOINT_URL (https, a public address) and prints its signing secret, shown this once."""
    with connect(url, api_key) as client:
        created = client.create_webhook_endpoint(
            endpoint_url, list(types) or None, description=description, enabled=not disabled
        )
    click.echo(f"created {created['id']} ({created['status']}) for {_types(created['types'])}")
    click.echo(f"signing secret (shown once, store it now): {created['secret']}")


@webhooks.command("list")
@url_option
@key_option
def webhooks_list(url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        _endpoints("webhook endpoints", client.list_webhook_endpoints())


@webhooks.command("show")
@click.argument("endpoint_id")
@url_option
@key_option
def webhooks_show(endpoint_id: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        _endpoints(endpoint_id, [client.get_webhook_endpoint(endpoint_id)])


@webhooks.command("update")
@click.argument("endpoint_id")
@click.option("--endpoint-url", default=None, help="a new URL (checked as at registration)")
@click.option("--type", "types", multiple=True, help="the event types it receives from now on (repeatable)")
@click.option("--all-types", is_flag=True, help="it receives every event type from now on")
@click.option("--description", default=None)
@url_option
@key_option
def webhooks_update(
    endpoint_id: str,
    endpoint_url: str | None,
    types: tuple[str, ...],
    all_types: bool,
    description: str | None,
    url: str,
    api_key: str,
) -> None:
    """Changes what is given of the endpoint; the rest stays."""
    if types and all_types:
        raise click.UsageError("give --type or --all-types, not both")
    changes: dict[str, Any] = {}
    if endpoint_url is not None:
        changes["url"] = endpoint_url
    if types or all_types:
        changes["types"] = list(types) or None
    if description is not None:
        changes["description"] = description
    if not changes:
        raise click.UsageError("nothing to change: give --endpoint-url, --type, --all-types or --description")
    with connect(url, api_key) as client:
        _endpoints(endpoint_id, [client.update_webhook_endpoint(endpoint_id, **changes)])


@webhooks.command("enable")
@click.argument("endpoint_id")
@url_option
@key_option
def webhooks_enable(endpoint_id: str, url: str, api_key: str) -> None:
    """Enables the endpoint (also one that is failing); then `replay --since` re-sends what failed meanwhile."""
    with connect(url, api_key) as client:
        endpoint = client.update_webhook_endpoint(endpoint_id, enabled=True)
    click.echo(f"{endpoint_id}: {endpoint['status']}")


@webhooks.command("disable")
@click.argument("endpoint_id")
@url_option
@key_option
def webhooks_disable(endpoint_id: str, url: str, api_key: str) -> None:
    """Disables the endpoint: nothing is sent to it until it is enabled."""
    with connect(url, api_key) as client:
        endpoint = client.update_webhook_endpoint(endpoint_id, enabled=False)
    click.echo(f"{endpoint_id}: {endpoint['status']}")


@webhooks.command("delete")
@click.argument("endpoint_id")
@url_option
@key_option
def webhooks_delete(endpoint_id: str, url: str, api_key: str) -> None:
    with connect(url, api_key) as client:
        client.delete_webhook_endpoint(endpoint_id)
    click.echo(f"deleted {endpoint_id}")


@webhooks.command("rotate-secret")
@click.argument("endpoint_id")
@url_option
@key_option
def webhooks_rotate_secret(endpoint_id: str, url: str, api_key: str) -> None:
    """A new signing secret, shown once; the previous one keeps signing beside it for 24 hours."""
    with connect(url, api_key) as client:
        rotated = client.rotate_webhook_secret(endpoint_id)
    click.echo(f"signing secret (shown once, store it now): {rotated['secret']}")
    click.echo(f"the previous secret still signs until {rotated['previous_valid_until']}")


@webhooks.command("events")
@click.option("--type", "type_", default=None, help="only events of this type")
@click.option("--limit", type=click.IntRange(1, 1000), default=None, help="page size (default 100)")
@click.option("--after", default=None, help="the page after this one (printed as `more: --after ...`)")
@url_option
@key_option
def webhooks_events(type_: str | None, limit: int | None, after: str | None, url: str, api_key: str) -> None:
    """The events sent to webhook endpoints, newest first."""
    with connect(url, api_key) as client:
        page = client.list_webhook_events(type=type_, limit=limit, after=after)
    table("webhook events", page["data"], ["id", "seq", "type", "created_at"])
    _more(page)


@webhooks.command("deliveries")
@click.argument("endpoint_id", required=False)
@click.option("--event", default=None, help="the deliveries of this event (instead of an endpoint's)")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=None, help="page size (default 100)")
@click.option("--after", default=None, help="the page after this one (printed as `more: --after ...`)")
@url_option
@key_option
def webhooks_deliveries(
    endpoint_id: str | None,
    event: str | None,
    status: str | None,
    limit: int | None,
    after: str | None,
    url: str,
    api_key: str,
) -> None:
    """The delivery log of ENDPOINT_ID (newest first), or of one --event."""
    if (endpoint_id is None) == (event is None):
        raise click.UsageError("give an ENDPOINT_ID or --event EVENT_ID")
    with connect(url, api_key) as client:
        if event is not None:
            table(f"deliveries of {event}", client.webhook_event_deliveries(event), _DELIVERY_COLUMNS)
            return
        assert endpoint_id is not None
        page = client.webhook_deliveries(endpoint_id, status=status, limit=limit, after=after)
    table(f"deliveries to {endpoint_id}", page["data"], _DELIVERY_COLUMNS)
    _more(page)


@webhooks.command("replay")
@click.option("--event", default=None, help="send this event again (to --endpoint only, if given)")
@click.option("--endpoint", default=None, help="the endpoint to send to")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]),
    default=None,
    help="with --endpoint and no --event: its failed deliveries of events since then (e.g. 2026-11-01T00:00:00Z)",
)
@url_option
@key_option
def webhooks_replay(event: str | None, endpoint: str | None, since: datetime | None, url: str, api_key: str) -> None:
    """Sends an event again (--event), or an endpoint's failed deliveries since a time (--endpoint --since)."""
    if event is None and (endpoint is None or since is None):
        raise click.UsageError("give --event EVENT_ID [--endpoint ID], or --endpoint ID --since TIME")
    if event is not None and since is not None:
        raise click.UsageError("--since goes with --endpoint alone; an --event is sent again whatever its time")
    with connect(url, api_key) as client:
        if event is not None:
            done = client.replay_webhook_event(event, endpoint)
        else:
            assert endpoint is not None and since is not None
            moment = since if since.tzinfo is not None else since.astimezone()
            done = client.replay_webhook_endpoint(endpoint, moment)
    click.echo(f"{done['replayed']} deliveries queued again" + (" (more remain: run it again)" if done["more"] else ""))
