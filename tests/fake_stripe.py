"""A fake Stripe for the payment tests: the real ``stripe`` SDK talks to it, and it signs webhooks as Stripe does.

A threaded HTTP server on 127.0.0.1 (a random port) serving ``POST /v1/payment_intents`` and ``POST /v1/refunds``
the way the SDK expects them: form-encoded parameters (checked: amount an integer in minor units, currency in lower
case, customer, payment_method, ``off_session`` and ``confirm`` true, metadata naming tenant, invoice and attempt),
``Authorization: Bearer <secret key>`` and an ``Idempotency-Key`` on every request. A replayed key gets the first
response again and moves no money; ``charges`` counts the PaymentIntents really created, so a test can assert that a
customer was charged once. ``decline(n)`` makes the next ``n`` charges card errors (402, ``card_declined``, as
Stripe answers a confirmed off-session intent that fails); ``processing(n)`` leaves the next ``n`` intents
``processing`` (their outcome arrives by webhook only). ``on_charge`` runs after a charge is recorded and before it
is answered (a test kills the server there). ``GET /v1/payment_intents/search`` finds intents by their metadata.

Webhooks: ``event(type, obj)`` builds a Stripe event; ``deliver(event, url, secret)`` posts it with
``Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<payload>">``, so the server verifies it with the real
``stripe.Webhook.construct_event``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx

__all__ = ["FakeStripe", "sign"]


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header of ``payload``, as Stripe computes it."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


class FakeStripe:
    def __init__(self, secret_key: str = "sk_test_fake") -> None:
        self.secret_key = secret_key
        self.lock = threading.Lock()
        #: Every request received, as (path, idempotency key, form parameters), replays included.
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: PaymentIntents really created (a replayed key creates none), and money refunded per intent (minor units).
        self.charges = 0
        self.intents: dict[str, dict[str, Any]] = {}
        self.refunded: dict[str, int] = {}
        self.problems: list[str] = []
        self._responses: dict[str, tuple[int, bytes]] = {}
        self._declines = 0
        self._processing = 0
        self._ids = 0
        self.on_charge: Callable[[dict[str, Any]], None] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                status, body = fake.handle(self.path, self.headers.get("authorization", ""), self.headers, form)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client is gone (a killed server)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, _, query = self.path.partition("?")
                status, body = fake.search(path, self.headers.get("authorization", ""), dict(parse_qsl(query)))
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def decline(self, n: int) -> None:
        with self.lock:
            self._declines = n

    def processing(self, n: int) -> None:
        with self.lock:
            self._processing = n

    def keys(self, path: str = "/v1/payment_intents") -> list[str]:
        """The idempotency keys sent to ``path``, in order, replays included."""
        return [key for p, key, _ in self.requests if p == path]

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_fake{self._ids:04d}"

    def handle(self, path: str, auth: str, headers: Any, form: dict[str, str]) -> tuple[int, bytes]:
        key = headers.get("idempotency-key") or ""
        with self.lock:
            self.requests.append((path, key, form))
            if auth != f"Bearer {self.secret_key}":
                return 401, _error("invalid_request_error", "api_key_invalid", "Invalid API Key provided")
            if not key:
                self.problems.append(f"{path} without an Idempotency-Key")
            if key in self._responses:
                return self._responses[key]
            if path == "/v1/payment_intents":
                answer = self._intent(form)
            elif path == "/v1/refunds":
                answer = self._refund(form)
            else:
                return 404, _error("invalid_request_error", "resource_missing", f"no route {path}")
            self._responses[key] = answer
        if path == "/v1/payment_intents" and self.on_charge is not None and answer[0] in (200, 402):
            self.on_charge(form)
        return answer

    def _intent(self, form: dict[str, str]) -> tuple[int, bytes]:
        for name in ("amount", "currency", "customer", "off_session", "confirm"):
            if name not in form:
                self.problems.append(f"payment_intents: {name} missing")
        if not form.get("amount", "").isdigit():
            self.problems.append(f"amount {form.get('amount')!r} is not an integer of minor units")
        if form.get("currency", "") != form.get("currency", "").lower():
            self.problems.append(f"currency {form.get('currency')!r} is not lower case")
        if form.get("off_session") != "true" or form.get("confirm") != "true":
            self.problems.append("off_session and confirm must be true")
        metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
        if set(metadata) != {"tenant", "invoice", "attempt"}:
            self.problems.append(f"metadata {metadata}")
        self.charges += 1
        intent: dict[str, Any] = {
            "id": self._id("pi"),
            "object": "payment_intent",
            "amount": int(form.get("amount", "0")),
            "currency": form.get("currency"),
            "customer": form.get("customer"),
            "payment_method": form.get("payment_method"),
            "metadata": metadata,
            "latest_charge": self._id("ch"),
            "status": "succeeded",
        }
        self.intents[intent["id"]] = intent
        if self._declines > 0:
            self._declines -= 1
            error = {
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "type": "card_error",
                "charge": intent["latest_charge"],
            }
            intent.update(status="requires_payment_method", last_payment_error=error)
            return 402, json.dumps({"error": {**error, "payment_intent": intent}}).encode()
        if self._processing > 0:
            self._processing -= 1
            intent["status"] = "processing"
        return 200, json.dumps(intent).encode()

    def _refund(self, form: dict[str, str]) -> tuple[int, bytes]:
        intent = self.intents.get(form.get("payment_intent", ""))
        if intent is None or intent["status"] != "succeeded":
            return 400, _error("invalid_request_error", "resource_missing", "no such payment_intent")
        amount = int(form.get("amount") or intent["amount"])
        done = self.refunded.get(intent["id"], 0)
        if done + amount > intent["amount"]:
            return 400, _error("invalid_request_error", "charge_already_refunded", "amount exceeds the charge")
        self.refunded[intent["id"]] = done + amount
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "payment_intent": intent["id"],
            "status": "succeeded",
            "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
        }
        return 200, json.dumps(refund).encode()

    def search(self, path: str, auth: str, params: dict[str, str]) -> tuple[int, bytes]:
        """``GET /v1/payment_intents/search``: the intents whose metadata matches every ``metadata['k']:'v'``."""
        with self.lock:
            self.requests.append((path, "", params))
            if auth != f"Bearer {self.secret_key}" or path != "/v1/payment_intents/search":
                return 404, _error("invalid_request_error", "resource_missing", f"no route {path}")
            wanted = dict(re.findall(r"metadata\['([^']+)'\]:'([^']*)'", params.get("query", "")))
            found = [
                i for i in self.intents.values() if wanted and all(i["metadata"].get(k) == v for k, v in wanted.items())
            ]
            result = {"object": "search_result", "url": path, "has_more": False, "data": found}
            return 200, json.dumps(result).encode()

    # Webhooks

    def event(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            event_id = self._id("evt")
        return {"id": event_id, "object": "event", "type": type_, "created": int(time.time()), "data": {"object": obj}}

    def charge_of(self, intent_id: str) -> dict[str, Any]:
        """The charge object of an intent, as ``charge.refunded`` carries it (metadata copied from the intent)."""
        intent = self.intents[intent_id]
        return {
            "id": intent["latest_charge"],
            "object": "charge",
            "amount": intent["amount"],
            "amount_refunded": self.refunded.get(intent_id, 0),
            "currency": intent["currency"],
            "payment_intent": intent_id,
            "metadata": intent["metadata"],
            "refunded": self.refunded.get(intent_id, 0) == intent["amount"],
        }

    def deliver(
        self, event: dict[str, Any], url: str, secret: str, timestamp: int | None = None, payload: bytes | None = None
    ) -> httpx.Response:
        """Posts ``event`` signed with ``secret`` (or ``payload`` with the signature of ``event``: a tampered body)."""
        body = json.dumps(event).encode()
        headers = {"content-type": "application/json", "stripe-signature": sign(body, secret, timestamp)}
        return httpx.post(f"{url}/v1/webhooks/stripe", content=payload or body, headers=headers, timeout=30)


def _error(type_: str, code: str, message: str) -> bytes:
    return json.dumps({"error": {"type": type_, "code": code, "message": message}}).encode()
