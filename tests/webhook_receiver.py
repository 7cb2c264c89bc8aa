"""A webhook receiver for end-to-end tests: an HTTP server on 127.0.0.1 whose answers the test scripts.

Each request is recorded (path, headers, body) when it arrives, then answered as the next `Answer` of the script (the
last one repeats): a status, after an optional delay or once an event is set, with a body of a given size, or a body
that never ends (streamed until the client stops reading).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    delay: float = 0.0
    #: Wait for this event before answering (at most 30 s).
    hold: threading.Event | None = None
    body: bytes = b"ok"
    #: Stream a body with no length, 64 KiB at a time, until the client goes away (at most `endless_cap` bytes).
    endless: bool = False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    answers: list[Answer] = field(default_factory=lambda: [Answer()])
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    #: Bytes of endless bodies written before the client went away.
    streamed: int = 0
    endless_cap: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                answer = receiver.next()
                try:
                    if answer.hold is not None:
                        answer.hold.wait(30)
                    time.sleep(answer.delay)
                    self.send_response(answer.status)
                    if answer.endless:
                        self.send_header("connection", "close")
                        self.end_headers()
                        chunk = b"x" * 65536
                        while receiver.streamed < receiver.endless_cap:
                            self.wfile.write(chunk)
                            receiver.streamed += len(chunk)
                    else:
                        self.send_header("content-length", str(len(answer.body)))
                        self.end_headers()
                        self.wfile.write(answer.body)
                except OSError:  # the client went away (a timeout, a cut answer, a killed server)
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next(self) -> Answer:
        with self.lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """``check()``'s first truthy value, polled; an AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
