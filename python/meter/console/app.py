"""What every console page shares: the session, CSRF, security headers, dispatch, templates and error pages.

Security, page by page:

- **Signing in** posts an API key in a form (never in a URL, never logged). The key must be a tenant's with the
  ``read`` scope; actions that change state also need ``admin``.
- **The session** is a cookie holding a token signed with the key's stored hash (``KeyStore.session_token``): no
  secret in it, nothing kept in memory, and revoking the key ends the session at once. It is ``HttpOnly``,
  ``SameSite=Strict``, scoped to ``/console``, and ``Secure`` when the console is served over TLS (directly, or
  behind a proxy that sends ``X-Forwarded-Proto: https``).
- **CSRF**: every form that changes state carries a token derived from the session (an HMAC of it); a POST without
  the right one is refused (403) before anything is done. The sign-in form, which has no session yet, carries a
  random token also set as a cookie (double submit).
- **Headers**: a Content-Security-Policy that allows scripts, styles and images from the console itself only (no
  inline script, no other origin), ``frame-ancestors 'none'``, ``nosniff``, no referrer, and ``no-store``.
- Templates autoescape every value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jinja2

from meter.catalog.keys import ApiKey
from meter.console.charts import quantity
from meter.encoding import plain
from meter.exceptions import MeterError
from meter.server.context import Context, opened
from meter.server.errors import ApiError, status_of
from meter.server.http import Answer, Receive, Request, read_body

__all__ = ["Console", "Page", "Session"]

ROOT = "/console"
#: The session cookie, and the sign-in form's own CSRF cookie.
COOKIE, SIGN_IN_COOKIE = "meter_console", "meter_console_sign_in"
#: A session lasts this long after signing in.
SESSION_S = 8 * 3600
#: The largest form the console reads.
MAX_FORM = 64 * 1024
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Session:
    """The signed-in key, and its session token (what the CSRF token is derived from)."""

    key: ApiKey
    token: str

    @property
    def tenant(self) -> str:
        assert self.key.tenant is not None  # operator keys cannot sign in
        return self.key.tenant

    @property
    def csrf(self) -> str:
        return hmac.new(self.token.encode(), b"console-csrf", hashlib.sha256).hexdigest()

    @property
    def admin(self) -> bool:
        return "admin" in self.key.scopes


@dataclass
class Page:
    """One request as a page handler sees it."""

    request: Request
    session: Session
    form: dict[str, str]
    #: The path's parameters.
    args: dict[str, str]


Handler = Callable[["Console", Page], Awaitable[Answer]]


@dataclass(frozen=True)
class ConsoleRoute:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    #: ``read`` or ``admin``: the scope the signed-in key needs.
    scope: str


class Console:
    """The console of one app: its routes (``pages.ROUTES``), its templates, and the stores of ``ctx``."""

    def __init__(self, ctx: Context, routes: list[tuple[str, str, Handler, str]]) -> None:
        self.ctx = ctx
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        # Numbers as the API writes them (never 2E+1), times in UTC to the minute.
        self.templates.filters["plain"] = plain
        self.templates.filters["quantity"] = quantity
        self.templates.filters["when"] = lambda moment: f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        self.routes = [ConsoleRoute(method, _pattern(path), handler, scope) for method, path, handler, scope in routes]

    async def handle(self, request: Request, receive: Receive, scheme: str) -> Answer:
        status, body, headers = await self._answer(request, receive, scheme)
        return status, body, SECURITY_HEADERS | headers

    async def _answer(self, request: Request, receive: Receive, scheme: str) -> Answer:
        path = request.path.rstrip("/") or "/"
        if path == ROOT:
            return redirect(f"{ROOT}/customers")
        if path.startswith(f"{ROOT}/static/"):
            return static(path.removeprefix(f"{ROOT}/static/")) or self.error(None, 404, "no such file")
        if path == f"{ROOT}/sign-in":
            return await self.sign_in(request, receive, scheme)
        session = await self.session(request)
        if session is None:
            return redirect(f"{ROOT}/sign-in")
        request.key = session.key  # so that the API's own handlers, which pages reuse, read the same tenant
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None or route.method != request.method:
                continue
            form: dict[str, str] = {}
            if request.method == "POST":
                form = await self.read_form(request, receive)
                if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
                    return self.error(session, 403, "the form's CSRF token is missing or wrong: reload the page")
            if route.scope == "admin" and not session.admin:
                return self.error(session, 403, "this action needs a key with the admin scope")
            try:
                return await route.handler(self, Page(request, session, form, found.groupdict()))
            except MeterError as e:
                return self.error(session, status_of(e), e.message)
            except ApiError as e:
                return self.error(session, e.status, e.message)
        return self.error(session, 404, f"there is no console page at {path}")

    # Signing in and out

    async def sign_in(self, request: Request, receive: Receive, scheme: str) -> Answer:
        # Over TLS, or behind a proxy that ended TLS and says so: a client claiming it falsely only makes its own
        # cookie one its browser sends over HTTPS alone.
        tls = scheme == "https" or (request.headers.get("x-forwarded-proto") or "").lower() == "https"
        secure = "; Secure" if tls else ""
        if request.method != "POST":
            token = secrets.token_urlsafe(32)
            answer = self.html(200, "sign_in.html", None, csrf=token, message=None)
            return answer[0], answer[1], answer[2] | {"set-cookie": _cookie(SIGN_IN_COOKIE, token, 600, secure)}
        form = await self.read_form(request, receive)
        expected = _cookies(request).get(SIGN_IN_COOKIE, "")
        if not expected or not hmac.compare_digest(form.get("csrf", ""), expected):
            return self.html(403, "sign_in.html", None, csrf=expected, message="The form expired: try again.")
        keys = opened(self.ctx.keys)
        secret = form.get("key", "").strip()
        key = await self.ctx.call(keys.authenticate, secret) if secret else None
        if key is None or key.tenant is None or "read" not in key.scopes:
            message = "That key is unknown, revoked, an operator's, or lacks the read scope."
            return self.html(401, "sign_in.html", None, csrf=expected, message=message)
        token = keys.session_token(key, int(time.time()) + SESSION_S)
        return 303, b"", {"location": f"{ROOT}/customers", "set-cookie": _cookie(COOKIE, token, SESSION_S, secure)}

    async def session(self, request: Request) -> Session | None:
        token = _cookies(request).get(COOKIE)
        if not token or self.ctx.keys is None:
            return None
        key = await self.ctx.call(opened(self.ctx.keys).session_key, token, time.time())
        if not isinstance(key, ApiKey) or key.tenant is None:
            return None
        return Session(key, token)

    # What pages share

    async def read_form(self, request: Request, receive: Receive) -> dict[str, str]:
        body = await read_body(request, receive, MAX_FORM)
        return dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))

    def html(self, status: int, template: str, session: Session | None, /, **values: Any) -> Answer:
        page = self.templates.get_template(template).render(session=session, root=ROOT, **values)
        return status, page.encode(), {"content-type": "text/html; charset=utf-8"}

    def page(self, template: str, session: Session, /, **values: Any) -> Answer:
        return self.html(200, template, session, **values)

    def error(self, session: Session | None, status: int, message: str) -> Answer:
        return self.html(status, "error.html", session, code=status, message=message)


def _pattern(path: str) -> re.Pattern[str]:
    """``/console/revenue/{chart}.svg`` as a regular expression: each ``{name}`` one path segment's text."""
    parts = re.split(r"(\{\w+\})", path)
    return re.compile(
        "^" + "".join(f"(?P<{p[1:-1]}>[^/]+?)" if p.startswith("{") else re.escape(p) for p in parts) + "$"
    )


def redirect(location: str, headers: dict[str, str] | None = None) -> Answer:
    """A 303 to ``location`` (after a form: the browser GETs it, and a reload does not post again)."""
    return 303, b"", {"location": location} | (headers or {})


def signed_out() -> Answer:
    """Back to the sign-in page, the session cookie cleared."""
    return redirect(f"{ROOT}/sign-in", {"set-cookie": _cookie(COOKIE, "", 0, "")})


def static(name: str) -> Answer | None:
    path = STATIC / name
    if "/" in name or path.suffix not in _STATIC_TYPES or not path.is_file():
        return None
    return 200, path.read_bytes(), {"content-type": _STATIC_TYPES[path.suffix], "cache-control": "max-age=3600"}


def _cookie(name: str, value: str, max_age: int, secure: str) -> str:
    return f"{name}={value}; Max-Age={max_age}; Path={ROOT}; HttpOnly; SameSite=Strict{secure}"


def _cookies(request: Request) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in (request.headers.get("cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name and name not in found:
            found[name] = value
    return found
