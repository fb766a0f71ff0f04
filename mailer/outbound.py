"""Every fetch of a URL that outside text chose: feeds, page import, and whatever comes next.

A feed or a page is named by someone else, and so is every redirect it
answers with. Fetched naively, `http://169.254.169.254/` or a redirect to
`http://127.0.0.1:6379/` would have us read our own network and mail what
we found to readers. So no connection is made to an address that is not
globally routable: loopback, private, link-local, shared (CGNAT),
multicast, reserved or unspecified, IPv4 and IPv6, including an IPv4
address carried inside IPv6 (IPv4-mapped, 6to4, NAT64).

The check is made where the connection is made: the host name of each hop
(the first request and every redirect) is resolved once, every address it
resolves to is checked, and the socket is opened to exactly the address
that was checked, so a name that resolves to a public address for the
check and a private one for the connect (DNS rebinding) gets nowhere. TLS
still verifies the certificate for the host name. Proxies from the
environment are not used: a proxy would make the connection for us, to
addresses we never see.

`MAILER_FETCH_ALLOW_PRIVATE=true` turns the address check off, for a site
whose feeds live on the same private network. The scheme is always http or
https (httpx itself refuses to follow a redirect to anything else). Ports
are not restricted: feeds on :8080 are common, and the address is what
separates our network from the world.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from mailer.config import Settings
from mailer.models import utcnow

MAX_REDIRECTS = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class RefusedAddress(Exception):
    """A hop's host resolves to an address we do not connect to; the message says which."""


def refusal(address: IPAddress) -> str | None:
    """Why we may not connect to `address`, or None when it is a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            why = refusal(inner)
            return f"{why} ({address} carries {inner})" if why else None
        if address.is_site_local:
            return "a site-local address"
    for kind, test in (
        ("a loopback", address.is_loopback),
        ("an unspecified", address.is_unspecified),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a private", address.is_private),
        ("a shared (carrier-grade NAT)", address in _SHARED),
        ("a reserved", address.is_reserved),
        ("a non-public", not address.is_global),
    ):
        if test:
            return f"{kind} address"
    return None


def is_loopback(address: IPAddress) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order, each once."""
    found: dict[IPAddress, None] = {}
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(found)


class _CheckedBackend(httpcore.SyncBackend):
    """Opens each TCP connection to an address it has just resolved and checked."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not self.allow_private:
            for address in addresses:
                why = refusal(address)
                if why:
                    raise RefusedAddress(
                        f"refused to connect to {host} ({address}): {why}; "
                        "MAILER_FETCH_ALLOW_PRIVATE=true allows it"
                    )
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
        raise error


def client(settings: Settings, timeout: float | None = None) -> httpx.Client:
    """An httpx client whose every connection, on every redirect, is checked as above."""
    transport = httpx.HTTPTransport()
    # httpx builds its pool without a way to pass a network backend; this is that pool
    # with ours (the same TLS context httpx made for it).
    ssl_context = transport._pool._ssl_context
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        network_backend=_CheckedBackend(settings.fetch_allow_private),
    )
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(settings.feed_timeout if timeout is None else timeout),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
    )


@dataclass
class FetchResult:
    """What one GET gave: a body, "not modified", or an error message."""

    url: str
    status: str  # "ok" | "not_modified" | "error"
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    retry_after: int | None = None


def user_agent(settings: Settings) -> str:
    """Names us and where to find us, so a site owner who sees our polls can ask."""
    return f"mailer/0.1 (newsletter digest; +{settings.base_url})"


def _retry_after(value: str | None) -> int | None:
    if not value:
        return None
    if value.strip().isdigit():
        return int(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int((when - utcnow()).total_seconds()))


def fetch(
    url: str,
    settings: Settings,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    accept: str = "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5",
) -> FetchResult:
    """GET `url` within `feed_timeout` seconds in all and `feed_max_bytes`; never raises.

    Every hop goes through `client` (the address check); a refused one is an
    error like any other, and nothing is fetched from it.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        return FetchResult(url, "error", error="only http and https URLs can be fetched")
    headers = {"User-Agent": user_agent(settings), "Accept": accept}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    http = client(settings)
    deadline = time.monotonic() + settings.feed_timeout
    limit = settings.feed_max_bytes
    try:
        with http.stream("GET", url, headers=headers) as response:
            final = str(response.url)
            if response.status_code == 304:
                return FetchResult(final, "not_modified", etag=etag, last_modified=last_modified)
            if response.status_code >= 400:
                return FetchResult(
                    final,
                    "error",
                    error=f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                    retry_after=_retry_after(response.headers.get("retry-after"))
                    if response.status_code in (429, 503)
                    else None,
                )
            if response.status_code >= 300:
                return FetchResult(final, "error", error=f"HTTP {response.status_code} redirect")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                return FetchResult(final, "error", error=_too_large(limit))
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return FetchResult(final, "error", error=_too_large(limit))
                if time.monotonic() > deadline:
                    return FetchResult(final, "error", error=_timed_out(settings))
                chunks.append(chunk)
            return FetchResult(
                final,
                "ok",
                body=b"".join(chunks),
                content_type=response.headers.get("content-type", ""),
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
            )
    except RefusedAddress as exc:
        return FetchResult(url, "error", error=str(exc))
    except httpx.TimeoutException:
        return FetchResult(url, "error", error=_timed_out(settings))
    except httpx.TooManyRedirects:
        return FetchResult(url, "error", error=f"more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        return FetchResult(url, "error", error=f"could not fetch: {type(exc).__name__}: {exc}")
    finally:
        http.close()


def _too_large(limit: int) -> str:
    return f"response larger than the {limit}-byte limit (MAILER_FEED_MAX_BYTES)"


def _timed_out(settings: Settings) -> str:
    return f"timed out after {settings.feed_timeout:g} s (MAILER_FEED_TIMEOUT)"
