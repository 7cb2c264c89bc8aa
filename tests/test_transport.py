"""The HTTP transport (issue 11).

Authentication before the body, headers as a list, bodies read whole or refused, decompression off the event loop,
request metadata that cannot raise, and the error bodies of /v1/events.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import meter.server.compression as compression
import pytest
import zstandard
from conftest import body
from http_server import Server, recent_event
from meter.server.app import MeterApp
from meter.server.compression import gunzip, unzstd
from meter.server.errors import ApiError

LIMIT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("transport") / "data")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> httpx.Client:
    c = server.client(server.tenant_key("acme", ["ingest", "read", "admin"]))
    r = c.post(
        "/v1/meters", json={"slug": "tokens", "event_type": "llm", "aggregation": "sum", "value_property": "$.tokens"}
    )
    assert r.status_code == 201, r.text
    return c


def accepted_again(client: httpx.Client, *ids: str) -> int:
    """How many of these ids are new to the server (re-sent, an id the server already has is a duplicate)."""
    r = client.post("/v1/events", content=body(*(recent_event(i, tokens=1) for i in ids)))
    assert r.status_code in (200, 400), r.text
    return int(r.json()["accepted"])


def raw(server: Server, request: bytes, half_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# Authentication comes before the body


@pytest.mark.parametrize(
    "headers, content",
    [
        ({"content-encoding": "gzip"}, gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")),  # a bomb
        ({"content-encoding": "gzip"}, b"not gzip at all"),
        ({"content-encoding": "br"}, b"x"),
        ({}, b"[" + b" " * (17 * 1024 * 1024) + b"]"),  # over the size limit
        ({}, b"{nope"),
    ],
)
def test_an_unauthenticated_body_is_never_read(server: Server, headers: dict[str, str], content: bytes) -> None:
    for auth in ({}, {"authorization": "Bearer nonsense"}):
        r = httpx.post(server.url + "/v1/events", content=content, headers={**headers, **auth}, timeout=60)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text


def test_a_declared_oversized_body_is_refused_after_the_key(server: Server, client: httpx.Client) -> None:
    head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\n"
    reply = raw(server, head, half_close=False)
    assert b" 401 " in reply.split(b"\r\n")[0], reply[:200]


# Headers are a list


def test_two_authorization_headers_are_a_400_whatever_their_order(server: Server, client: httpx.Client) -> None:
    good = client.headers["authorization"]
    for pair in ((good, "Bearer nonsense"), ("Bearer nonsense", good), (good, good)):
        r = httpx.post(
            server.url + "/v1/events",
            content=body(recent_event("dup-auth", tokens=1)),
            headers=[("authorization", pair[0]), ("authorization", pair[1])],
        )
        assert r.status_code == 400 and r.json()["code"] == "duplicate_header", r.text
    assert accepted_again(client, "dup-auth") == 1, "nothing of a refused request was applied"


def test_other_single_valued_headers_twice_are_a_400(server: Server, client: httpx.Client) -> None:
    good = client.headers["authorization"]
    for name, values in (("content-encoding", ("gzip", "identity")), ("content-type", ("application/json",) * 2)):
        r = httpx.post(
            server.url + "/v1/events",
            content=body(recent_event("dup-h", tokens=1)),
            headers=[("authorization", good), (name, values[0]), (name, values[1])],
        )
        assert r.status_code == 400 and r.json()["code"] == "duplicate_header", (name, r.text)


def test_a_query_parameter_twice_is_a_400_not_last_wins(client: httpx.Client) -> None:
    r = client.post("/v1/events?atomic=true&atomic=false", content=body(recent_event("q2", tokens=1), {"id": "bad"}))
    assert r.status_code == 400 and r.json()["code"] == "invalid_query", r.text
    assert accepted_again(client, "q2") == 1


# Non-UTF-8 request metadata is a 400


@pytest.mark.parametrize(
    "request_line, header",
    [
        (b"GET /v1/meters/caf%E9 HTTP/1.1", b""),  # granian would hand the app "caf\ufffd": another name
        (b"GET /v1/meters?x=%FF HTTP/1.1", b""),
        (b"GET /v1/meters HTTP/1.1", b"X-Note: caf\xe9\r\n"),
        (b"GET /v1/meters HTTP/1.1", b"User-Agent: \xff\xfe\r\n"),
        (b"GET /healthz HTTP/1.1", b"X-Note: \xc3\x28\r\n"),
        (b"POST /v1/events HTTP/1.1", b"Content-Type: application/json; charset=\xff\r\nContent-Length: 2\r\n"),
    ],
)
def test_non_utf8_request_metadata_is_a_400(
    server: Server, client: httpx.Client, request_line: bytes, header: bytes
) -> None:
    auth = client.headers["authorization"].encode()
    content = b"[]" if request_line.startswith(b"POST") else b""
    reply = raw(
        server,
        request_line
        + b"\r\nHost: x\r\nAuthorization: "
        + auth
        + b"\r\n"
        + header
        + b"Connection: close\r\n\r\n"
        + content,
        half_close=False,
    )
    status = reply.split(b"\r\n")[0]
    assert b" 400 " in status, reply[:300]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["code"] == "invalid_encoding"


def test_raw_non_ascii_in_the_request_line_is_refused_by_granian(server: Server) -> None:
    for line in (b"GET /v1/meters/caf\xe9 HTTP/1.1", b"GET /v1/meters?x=\xff HTTP/1.1"):
        reply = raw(server, line + b"\r\nHost: x\r\nConnection: close\r\n\r\n", half_close=False)
        assert b" 400 " in reply.split(b"\r\n")[0], reply[:300]


def test_utf8_request_metadata_still_works(client: httpx.Client) -> None:
    r = client.get("/v1/meters/café")
    assert r.status_code == 404 and "café" in r.json()["message"], r.text


# Compressed bodies are read whole or refused


def test_every_gzip_member_is_read(client: httpx.Client) -> None:
    payload = gzip.compress(body(recent_event("gm1", tokens=1))) + gzip.compress(body(recent_event("gm2", tokens=1)))
    r = client.post("/v1/events", content=payload, headers={"content-encoding": "gzip"})
    # Two members are two JSON arrays back to back: not one valid batch, so refused whole, never half-read.
    assert r.status_code == 400 and r.json()["code"] == "invalid_json", r.text
    assert accepted_again(client, "gm1", "gm2") == 2
    # Members that together make one batch are all read.
    one = body(recent_event("gm3", tokens=1), recent_event("gm4", tokens=1))
    payload = gzip.compress(one[: len(one) // 2]) + gzip.compress(one[len(one) // 2 :])
    r = client.post("/v1/events", content=payload, headers={"content-encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text


def test_every_zstd_frame_is_read(client: httpx.Client) -> None:
    c = zstandard.ZstdCompressor()
    one = body(recent_event("zf1", tokens=1), recent_event("zf2", tokens=1))
    r = client.post(
        "/v1/events", content=c.compress(one[:20]) + c.compress(one[20:]), headers={"content-encoding": "zstd"}
    )
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
@pytest.mark.parametrize("damage", ["trailing garbage", "trailing zeros", "truncated", "truncated second member"])
def test_a_damaged_compressed_body_is_refused_and_nothing_applied(
    client: httpx.Client, encoding: str, damage: str
) -> None:
    compress = gzip.compress if encoding == "gzip" else zstandard.ZstdCompressor().compress
    ident = f"dmg-{encoding}-{damage.replace(' ', '-')}"
    good = compress(body(recent_event(ident, tokens=1)))
    payload = {
        "trailing garbage": good + b"garbage",
        "trailing zeros": good + b"\0" * 16,
        "truncated": good[:-3],
        "truncated second member": good + compress(b" ")[:-3],
    }[damage]
    r = client.post("/v1/events", content=payload, headers={"content-encoding": encoding})
    assert r.status_code == 400 and r.json()["code"] == f"invalid_{encoding}", r.text
    assert accepted_again(client, ident) == 1, "a refused body was partly applied"


def test_decompression_is_bounded_across_members() -> None:
    member = gzip.compress(b" " * (LIMIT // 2))
    with pytest.raises(ApiError) as e:
        gunzip(member * 3, LIMIT)
    assert e.value.status == 413
    frame = zstandard.ZstdCompressor().compress(b" " * (LIMIT // 2))
    with pytest.raises(ApiError) as e:
        unzstd(frame * 3, LIMIT)
    assert e.value.status == 413
    assert gunzip(member * 2, LIMIT) == b" " * LIMIT


def test_a_body_shorter_than_its_content_length_is_never_processed(server: Server, client: httpx.Client) -> None:
    auth = client.headers["authorization"].encode()
    content = body(recent_event("short-1", tokens=1))
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\nContent-Type: application/json"
        b"\r\nContent-Length: " + str(len(content) + 10).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    reply = raw(server, head + content)  # then the client half-closes: the last 10 bytes never come
    assert b" 200 " not in reply.split(b"\r\n")[0], reply[:300]
    assert accepted_again(client, "short-1") == 1, "a body short of its Content-Length was processed"


def test_a_client_that_disconnects_mid_body_has_nothing_applied(server: Server, client: httpx.Client) -> None:
    auth = client.headers["authorization"].encode()
    content = body(recent_event("gone-1", tokens=1))
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\nContent-Type: application/json"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head + f"{len(content):x}\r\n".encode() + content + b"\r\n")  # no last chunk: then gone
    assert accepted_again(client, "gone-1") == 1


# Query parameters and error bodies of /v1/events


@pytest.mark.parametrize("spelling", ["true", "TRUE", "True", "1", "yes", "YES"])
def test_atomic_true_spellings(client: httpx.Client, spelling: str) -> None:
    ident = f"at-{spelling}"
    r = client.post(f"/v1/events?atomic={spelling}", content=body(recent_event(ident, tokens=1), {"id": "bad"}))
    assert r.status_code == 422 and r.json()["code"] == "batch_rejected", r.text
    assert accepted_again(client, ident) == 1


@pytest.mark.parametrize("spelling", ["false", "FALSE", "0", "no", "No"])
def test_atomic_false_spellings(client: httpx.Client, spelling: str) -> None:
    r = client.post(
        f"/v1/events?atomic={spelling}", content=body(recent_event(f"af-{spelling}", tokens=1), {"id": "x"})
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


@pytest.mark.parametrize("spelling", ["maybe", "", "2", "on", "tru"])
def test_atomic_other_spellings_are_a_400(client: httpx.Client, spelling: str) -> None:
    ident = f"ax-{spelling}"
    r = client.post(f"/v1/events?atomic={spelling}", content=body(recent_event(ident, tokens=1), {"id": "bad"}))
    assert r.status_code == 400 and r.json()["code"] == "invalid_query", r.text
    assert accepted_again(client, ident) == 1


def test_a_400_from_events_has_code_message_and_issues(client: httpx.Client) -> None:
    # A value a meter cannot read is no longer a rejection (the meter skips the event): a time far ahead is.
    far_ahead = recent_event("inv", time=datetime(8999, 1, 1, tzinfo=UTC))
    r = client.post("/v1/events", content=body({"id": "no-fields"}, far_ahead))
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["code"] == "no_events_accepted" and "none of the 2 events" in answer["message"], answer
    assert [i["code"] for i in answer["issues"]] == ["missing_field", "too_far_in_future"], answer
    assert answer["accepted"] == 0 and answer["duplicates"] == 0


# Decompression does not stall the event loop


def asgi_call(app: MeterApp, method: str, path: str, headers: list[tuple[bytes, bytes]], content: bytes = b"") -> Any:
    """One request to the ASGI app in this process; returns (status, body)."""

    async def run() -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                await asyncio.Event().wait()  # no disconnect while the request runs
            delivered = True
            return {"type": "http.request", "body": content, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
        }
        await app(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    return run()


def test_healthz_answers_while_bombs_decompress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four gzip bombs decompress on the thread pool; each waits until /healthz has answered.

    Were decompression on the event loop, /healthz could not answer while they run and the bombs would time out.
    """
    healthz_answered = threading.Event()
    started = threading.Barrier(5)
    real = gunzip

    def gated_gunzip(data: bytes, limit: int) -> bytes:
        started.wait(timeout=30)  # all four bombs are decompressing now
        if not healthz_answered.wait(timeout=30):
            raise AssertionError("/healthz did not answer while the bombs were decompressing")
        return real(data, limit)

    monkeypatch.setattr(compression, "gunzip", gated_gunzip)
    app = MeterApp(tmp_path / "data")
    app.startup()
    try:
        key, _ = app.keys.create_key(None, ["admin"])
        app.keys.create_tenant("acme")
        tenant_key, _ = app.keys.create_key("acme", ["ingest"])
        bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")
        headers = [(b"authorization", f"Bearer {tenant_key}".encode()), (b"content-encoding", b"gzip")]

        async def scenario() -> list[Any]:
            bombs = [asyncio.ensure_future(asgi_call(app, "POST", "/v1/events", headers, bomb)) for _ in range(4)]
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
            status, answer = await asgi_call(app, "GET", "/healthz", [])
            assert status == 200 and json.loads(answer) == {"status": "ok"}
            healthz_answered.set()
            return list(await asyncio.gather(*bombs))

        results = asyncio.run(scenario())
        assert [status for status, _ in results] == [413] * 4, results
    finally:
        healthz_answered.set()
        app.shutdown()


def test_a_json_key_given_twice_is_a_400_not_last_wins(client: httpx.Client) -> None:
    r = client.post(
        "/v1/customers",
        content=b'{"id": "dupkey", "name": "A", "currency": "EUR", "currency": "USD"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_json" and "'currency'" in r.json()["message"], r.text
    assert client.get("/v1/customers/dupkey").status_code == 404
