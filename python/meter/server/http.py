"""ASGI plumbing: what the app reads of a request and how it writes an answer.

`Request.of(scope)` is the one place where request metadata (method, path, query string, headers) is decoded from
the ASGI scope; nothing else reads the raw scope. `read_body` is the one place a body is received.

Invariants:
- A request whose path, query string or headers are not valid UTF-8 is a 400 `invalid_encoding`, never a 500, and
  never silently repaired (a U+FFFD in a path would name another object).
- A single-valued header or query parameter given twice is a 400, never last-wins, so that a client can never
  override what a proxy set (or the other way round).
- A body is read whole and bounded (`max_body`, 413 past it) or refused; one that is not exactly its
  Content-Length is a 400 `incomplete_body`; a client that goes away mid-body raises `Disconnected`, and then
  nothing is processed and nothing answered. Decompression is `compression.py`'s, never done here.
- An answer is one `Answer` (status, body, headers): bytes are sent as they are, anything else as JSON
  (`meter.encoding.encode_json`), `application/json` unless the handler set a content-type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, overload
from urllib.parse import parse_qsl, unquote_to_bytes

from meter.catalog.keys import ApiKey
from meter.encoding import encode_json
from meter.server.errors import ApiError

__all__ = [
    "JSON",
    "Answer",
    "AsgiScope",
    "Disconnected",
    "Headers",
    "Receive",
    "Request",
    "Send",
    "read_body",
    "send_answer",
]

AsgiScope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: What a handler answers: status, body (bytes as they are; anything else encoded as JSON) and extra headers.
Answer = tuple[int, Any, dict[str, str]]

JSON = [(b"content-type", b"application/json")]


class Headers:
    """A request's headers as the list they arrived in, never a dict: a header sent twice is seen twice.

    `get` answers the one value of a header, joins the values of a list-valued one (RFC 9110 5.3), and refuses (400
    `duplicate_header`) a single-valued header sent twice, so that a client can never override a header a proxy set
    (or the other way round).
    """

    #: Headers whose repeated values combine into one comma-separated list.
    LISTS = frozenset(
        {"accept", "accept-encoding", "accept-language", "cache-control", "forwarded", "via", "x-forwarded-for"}
    )

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.getall(name)
        if not values:
            return default
        if len(values) > 1:
            if name in self.LISTS:
                return ", ".join(values)
            raise ApiError(400, "duplicate_header", f"the request has {len(values)} {name!r} headers; send one")
        return values[0]

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self.pairs)


class Request:
    """What the app reads of a request: its metadata, then (for a POST or PUT) its body, then its key.

    Handlers never read the query string themselves: the router parses the parameters a route declares and passes
    them as arguments (see `table.py`), so that what a handler reads is what `/openapi.json` documents.
    """

    def __init__(self, method: str, path: str, query: list[tuple[str, str]], headers: Headers) -> None:
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.body = b""
        self.key: ApiKey | None = None

    @property
    def actor(self) -> str:
        """Who made the request, as histories keep it (a correction's, say): its key's id."""
        return f"key:{self.key.id}" if self.key is not None else "anonymous"

    @classmethod
    def of(cls, scope: AsgiScope) -> Request:
        try:
            raw_path = scope.get("raw_path")
            # The path from the bytes on the wire when the server gives them: a server may already have replaced an
            # undecodable byte in `path` (a U+FFFD that would silently name another object).
            path = unquote_to_bytes(raw_path).decode() if raw_path else str(scope["path"])
            path.encode()  # a lone surrogate (surrogateescape) is not a path either
            query = parse_qsl(bytes(scope.get("query_string", b"")).decode(), keep_blank_values=True, errors="strict")
            headers = [(bytes(k).decode("ascii").lower(), bytes(v).decode()) for k, v in scope["headers"]]
            return cls(str(scope["method"]), path, query, Headers(headers))
        except Exception:  # noqa: BLE001 - undecodable request metadata is the client's error, never a 500
            raise ApiError(
                400,
                "invalid_encoding",
                "the path, the query string and every header must be valid "
                "UTF-8 (percent-encoded where the URL needs it)",
            ) from None

    def params(self, name: str) -> list[str]:
        """Every value of a query parameter, in the order given."""
        return [v for k, v in self.query if k == name]

    def param(self, name: str) -> str | None:
        """The one value of a query parameter: given twice is a 400, never last-wins."""
        values = self.params(name)
        if len(values) > 1:
            raise ApiError(400, "invalid_query", f"'{name}' is given {len(values)} times; give it once")
        return values[0] if values else None

    @property
    def tenant(self) -> str:
        """The tenant of the request's key; only routes with a tenant scope ask, and `authorize` let only those."""
        assert self.key is not None and self.key.tenant is not None, "authorize() lets only tenant keys here"
        return self.key.tenant


class Disconnected(Exception):
    """The client went away before its body arrived whole: nothing is processed, nothing answered."""


async def read_body(request: Request, receive: Receive, max_body: int) -> bytes:
    """The whole body as sent (still compressed), at most `max_body` bytes; never half-read.

    The Content-Length and Content-Encoding headers are checked before a byte is received: a body announced too
    large is a 413, an encoding that is not gzip or zstd a 415.
    """
    length = request.headers.get("content-length")
    expected: int | None = None
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise ApiError(400, "invalid_header", f"Content-Length must be a number of bytes; got {length!r}")
        expected = int(length)
        if expected > max_body:
            raise ApiError(413, "body_too_large", f"the body is {length} bytes; the limit is {max_body}")
    encoding = content_encoding(request)
    if encoding not in ("gzip", "zstd", "identity", ""):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip or zstd")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise ApiError(413, "body_too_large", f"the body exceeds the limit of {max_body} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if expected is not None and size != expected:
        raise ApiError(400, "incomplete_body", f"the body has {size} bytes; its Content-Length says {expected}")
    return b"".join(chunks)


def content_encoding(request: Request) -> str:
    """The request's Content-Encoding, lower case (`identity` when absent)."""
    return (request.headers.get("content-encoding") or "identity").strip().lower()


async def send_answer(send: Send, answer: Answer) -> None:
    """Send one whole answer: the start (status, headers), then the body in one message."""
    status, body, headers = answer
    payload = body if isinstance(body, bytes) else encode_json(body)
    headers = dict(headers)
    content_type = headers.pop("content-type", None)
    raw_headers = [(b"content-type", content_type.encode())] if content_type else list(JSON)
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
