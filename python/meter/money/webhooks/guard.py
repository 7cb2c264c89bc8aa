"""The outbound URL guard: a webhook goes to a public https address, never into the server's own network (SSRF).

A tenant chooses the URL, so without a guard a webhook could reach the server's loopback, the cloud metadata service
(169.254.169.254) or a database on the private network, and the delivery log would show its answers.

Rules, checked when an endpoint is registered (a 400 with one of the codes below) and again at every attempt (DNS
can change between the two, and a name can resolve to a public address once and a private one the next time):

- ``https`` only (``http`` too when private targets are allowed, for local receivers); no user name or password in
  the URL (they would be shown in every listing), no fragment, at most 2,048 characters: ``invalid_webhook_url``,
  ``insecure_webhook_url``.
- The host is resolved and every address it resolves to must be globally routable: not loopback, link-local,
  private, multicast, unspecified, reserved or shared (100.64/10), IPv4 and IPv6 alike, IPv4 inside IPv6
  included (IPv4-mapped, 6to4, Teredo, NAT64): ``private_webhook_url``; a host that does not resolve is
  ``unresolvable_webhook_url``.
- A delivery connects to the address that was just checked (`pinned`), never resolves the name again, so a
  rebinding DNS answer cannot slip a private address in between the check and the connection. TLS still verifies
  the certificate against the URL's host name (it is sent as SNI and in ``Host``).

``allow_private`` (``meter serve --allow-private-webhooks``, ``METER_ALLOW_PRIVATE_WEBHOOKS=1``) lifts the address
rules and allows ``http``: for tests and for installations whose receivers live on their own network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from meter.exceptions import InvalidInput

__all__ = ["MAX_URL", "Target", "UrlRefused", "check_url", "pinned", "refusal", "resolve", "resolve_async"]

MAX_URL = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class UrlRefused(InvalidInput):
    """A webhook URL the guard refuses; ``code`` says which rule (see the module's doc)."""

    code = "invalid_webhook_url"


@dataclass(frozen=True)
class Target:
    """A URL that passed the syntax rules: what to resolve and what to send."""

    url: httpx.URL
    #: The host as DNS and TLS know it (IDNA-encoded, without brackets for IPv6).
    host: str
    port: int


def check_url(url: str, allow_private: bool) -> Target:
    """``url`` parsed, if it follows the syntax rules; else ``UrlRefused``. Nothing is resolved."""
    shown = url if len(url) <= 100 else url[:100] + "..."
    if len(url) > MAX_URL:
        raise UrlRefused(f"the webhook URL is {len(url)} characters; the limit is {MAX_URL}")
    try:
        parsed = httpx.URL(url)
    except Exception as e:  # noqa: BLE001 - httpx.InvalidURL, or a codec's error on a strange host: the URL's fault
        raise UrlRefused(f"the webhook URL {shown!r} cannot be read: {e}; give an absolute https:// URL") from None
    scheme = parsed.scheme
    if scheme == "http" and not allow_private:
        raise UrlRefused(
            f"the webhook URL {shown!r} is http; use https (http is allowed only when the server runs with "
            "--allow-private-webhooks)",
            code="insecure_webhook_url",
        )
    if scheme not in ("http", "https"):
        raise UrlRefused(f"the webhook URL {shown!r} must start with https://; got the scheme {scheme!r}")
    if not parsed.raw_host:
        raise UrlRefused(f"the webhook URL {shown!r} has no host; give an absolute https:// URL")
    if parsed.userinfo:
        raise UrlRefused(
            "the webhook URL holds a user name or password, which every listing would show; authenticate "
            "the deliveries by their signature (webhook-signature) instead"
        )
    if parsed.fragment:
        raise UrlRefused(f"the webhook URL {shown!r} has a #fragment, which is never sent; remove it")
    port = parsed.port or (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise UrlRefused(f"the webhook URL's port must be 1-65535; got {port}")
    return Target(parsed, parsed.raw_host.decode("ascii"), port)


def refusal(address: IPAddress) -> str | None:
    """Why a delivery may not go to ``address`` (``"loopback"``, ``"private"``...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and any(address in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (why := refusal(embedded)) is not None:
            return f"{why} (IPv4 {embedded} inside IPv6)"
    for why, test in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    ):
        if test:
            return why
    return None


def _checked(target: Target, infos: list[tuple[object, ...]], allow_private: bool) -> list[IPAddress]:
    addresses: list[IPAddress] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        # An IPv6 scope ("fe80::1%eth0") is dropped: link-local is refused anyway.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"the webhook host {target.host!r} resolves to no address", code="unresolvable_webhook_url")
    if not allow_private:
        for address in addresses:
            if (why := refusal(address)) is not None:
                raise UrlRefused(
                    f"the webhook host {target.host!r} resolves to {address}, a {why} address; webhooks go to "
                    "public addresses only (an operator can allow private ones: meter serve "
                    "--allow-private-webhooks)",
                    code="private_webhook_url",
                )
    return addresses


def _unresolvable(target: Target, e: OSError) -> UrlRefused:
    return UrlRefused(
        f"the webhook host {target.host!r} cannot be resolved ({e.strerror or e}); check the URL's host name",
        code="unresolvable_webhook_url",
    )


def resolve(target: Target, allow_private: bool) -> list[IPAddress]:
    """Every address of the target's host, each checked (blocking: run it off the event loop)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:
        raise _unresolvable(target, e if isinstance(e, OSError) else OSError(str(e))) from None
    return _checked(target, list(infos), allow_private)


async def resolve_async(target: Target, allow_private: bool) -> list[IPAddress]:
    """`resolve` on the running loop (its resolver runs in a thread)."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:
        raise _unresolvable(target, e if isinstance(e, OSError) else OSError(str(e))) from None
    return _checked(target, list(infos), allow_private)


def pinned(target: Target, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, object]]:
    """The URL that connects to ``address`` itself, with the ``Host`` header and TLS server name of the real host.

    Returns (url, headers, request extensions) for httpx.
    """
    url = target.url.copy_with(host=str(address))  # httpx adds the brackets of an IPv6 address
    netloc = target.url.netloc.decode("ascii")
    return url, {"host": netloc}, {"sni_hostname": target.host}
