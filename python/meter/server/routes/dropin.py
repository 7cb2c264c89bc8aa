"""Drop-in ingest routes: each vendor's ingest API under ``/compat/<vendor>``, in its shape (`meter.server.dropin`).

A vendor's SDK is pointed at the prefix as its base URL; every route but Stripe's event stream (which carries a
session token) takes a meter key with the ``ingest`` scope as the vendor's ``Authorization: Bearer``. Errors, the
router's and the key check's included, come in the vendor's shape (``Route.errors_as``). They are not part of
meter's own API document: their contract is each vendor's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from meter.server.dropin import lago, metronome, openmeter, orb, stripe
from meter.server.http import Answer
from meter.server.table import TEXT, Access, Body, Handler, Param, PathParam, Route

__all__ = ["ROUTES"]

_JSON = Body(accept=("application/json",), accept_message="send application/json")
#: Stripe's SDK sends one with every POST, the same across its retries: the identity of events sent without one.
_IDEMPOTENCY = Param("idempotency-key", TEXT, "The request's idempotency key", where="header")


def _route(
    path: str,
    handler: Handler,
    errors_as: Callable[[Answer], Answer],
    summary: str,
    body: Body = _JSON,
    access: Access = "ingest",
    params: tuple[Param, ...] = (),
    method: Literal["GET", "POST", "PUT"] = "POST",
    path_params: tuple[PathParam, ...] = (),
) -> Route:
    return Route(
        method,
        path,
        access,
        handler,
        summary,
        body=body,
        params=params,
        path_params=path_params,
        errors_as=errors_as,
        documented=False,
    )


_ORB_EVENT = PathParam("event_id", "o-1", "The event's idempotency key")
_ORB_BACKFILL = PathParam("backfill_id", "bf_0123", "The backfill's id")
_FORM = Body(accept=("application/x-www-form-urlencoded",), accept_message="send application/x-www-form-urlencoded")


ROUTES = [
    _route(
        "/compat/openmeter/api/v1/events",
        openmeter.ingest,
        openmeter.error,
        "OpenMeter: ingest CloudEvents",
        Body(accept=openmeter.MEDIA, accept_message="send " + ", ".join(openmeter.MEDIA)),
    ),
    _route("/compat/metronome/v1/ingest", metronome.ingest, metronome.error, "Metronome: ingest usage events"),
    _route(
        "/compat/orb/v1/ingest",
        orb.ingest,
        orb.error,
        "Orb: ingest events",
        params=(Param("backfill_id", TEXT, "Stage the events into this backfill"),),
    ),
    _route("/compat/orb/v1/events/backfills", orb.backfill, orb.error, "Orb: create a backfill"),
    _route(
        "/compat/orb/v1/events/backfills/{backfill_id}/close",
        orb.close_backfill,
        orb.error,
        "Orb: close a backfill",
        Body(),
        path_params=(_ORB_BACKFILL,),
    ),
    _route(
        "/compat/orb/v1/events/backfills/{backfill_id}/revert",
        orb.revert_backfill,
        orb.error,
        "Orb: revert a backfill",
        Body(),
        path_params=(_ORB_BACKFILL,),
    ),
    _route(
        "/compat/orb/v1/events/backfills/{backfill_id}",
        orb.fetch_backfill,
        orb.error,
        "Orb: fetch a backfill",
        Body(),
        method="GET",
        path_params=(_ORB_BACKFILL,),
    ),
    _route(
        "/compat/orb/v1/events/{event_id}",
        orb.amend,
        orb.error,
        "Orb: amend an event",
        method="PUT",
        path_params=(_ORB_EVENT,),
    ),
    _route(
        "/compat/orb/v1/events/{event_id}/deprecate",
        orb.deprecate,
        orb.error,
        "Orb: deprecate an event",
        Body(),
        method="PUT",
        path_params=(_ORB_EVENT,),
    ),
    _route("/compat/lago/api/v1/events", lago.one, lago.error, "Lago: create an event"),
    _route("/compat/lago/api/v1/events/batch", lago.batch, lago.error, "Lago: create a batch of events"),
    _route(
        "/compat/stripe/v1/billing/meter_events",
        stripe.meter_event,
        stripe.error,
        "Stripe: create a meter event",
        _FORM,
        params=(_IDEMPOTENCY,),
    ),
    _route(
        "/compat/stripe/v1/billing/meter_event_adjustments", stripe.adjustment_v1, stripe.error, "Stripe: cancel", _FORM
    ),
    _route("/compat/stripe/v2/billing/meter_event_adjustments", stripe.adjustment_v2, stripe.error, "Stripe: cancel"),
    _route(
        "/compat/stripe/v2/billing/meter_event_session",
        stripe.session,
        stripe.error,
        "Stripe: a meter event session",
        Body(),
    ),
    _route(
        "/compat/stripe/v2/billing/meter_event_stream",
        stripe.stream,
        stripe.error,
        "Stripe: stream meter events",
        access="public",  # authenticated by its session's token, not a key
        params=(Param("authorization", TEXT, "Bearer <a session's token>", where="header"), _IDEMPOTENCY),
    ),
]
