"""Outbound HTTP guards shared by the ``http`` tool and the ``openai`` provider.

Both connect to URLs that whoever registers an agent or a workflow chose, so both
need the same three defences (OWASP SSRF Prevention Cheat Sheet, "Application layer"):

1. :func:`check_url`: the scheme is ``http``/``https``, the host is allow-listed (or any
   host may be, as the caller decides), and a literal address is public;
2. :class:`GuardedResolver`: a name's addresses are checked where aiohttp connects to
   them, so a DNS answer that changes between check and connect (rebinding) is caught;
3. :func:`read_capped`: the body is read whole, however it is chunked, and no further
   than its cap.

"Public" follows the IANA special-purpose registries (RFC 6890) through
:attr:`ipaddress.IPv4Address.is_global`, with IPv4 embedded in IPv6 (mapped, 6to4,
Teredo, NAT64) judged by the embedded address.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from ledger.orchestration.errors import SSRFBlockedError

_log = structlog.get_logger()

__all__ = [
    "GuardedResolver",
    "check_url",
    "is_public_address",
    "read_capped",
    "url_host",
    "url_origin",
]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_CHUNK = 64 * 1024


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """Whether ``address`` is globally routable: not private, loopback, link-local,
    shared (100.64.0.0/10, where cloud metadata services live), multicast, reserved or
    unspecified, also when an IPv6 address carries an IPv4 one."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _embedded(ip) or ip
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local  # deprecated
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_link_local or site_local
    )


def _host(hostname: str | None) -> str:
    return (hostname or "").lower().rstrip(".")


def url_origin(url: str) -> tuple[str, str, int]:
    """Scheme, lower-cased host and port (the scheme's default if none is written) of
    an ``http``/``https`` ``url``; refuses any other URL."""
    try:
        # The URL as the HTTP client (aiohttp, through yarl) reads it: yarl maps a host
        # through IDNA, so "127\u30020\u30020\u30021" (ideographic full stops) or
        # fullwidth digits connect to 127.0.0.1, and being a literal address then,
        # without asking the resolver. urlsplit() left them as written: a name.
        parsed = URL(url)
        port = parsed.port  # raises on a port that is not a number in range
    except ValueError as e:
        raise SSRFBlockedError(f"{url!r} is not a valid URL: {e}") from e
    if parsed.scheme not in _DEFAULT_PORTS:
        raise SSRFBlockedError(f"scheme {parsed.scheme!r} is not allowed")
    host = _host(parsed.raw_host)
    if not host:
        raise SSRFBlockedError(f"{url!r} names no host")
    return parsed.scheme, host, port or _DEFAULT_PORTS[parsed.scheme]


def url_host(url: str) -> str:
    """The host of an ``http``/``https`` ``url``, lower-cased; refuses any other URL."""
    return url_origin(url)[1]


def check_url(
    url: str, allow_hosts: frozenset[str] | None, allow_private_hosts: frozenset[str]
) -> str:
    """Step 1: refuse ``url`` unless its scheme, host and (literal) address pass; returns
    its host. ``allow_hosts`` ``None`` lets any host through to the address check."""
    host = url_host(url)
    if allow_hosts is not None and host not in allow_hosts:
        raise SSRFBlockedError(f"host {host!r} is not in the allow-list")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name: the resolver checks its addresses at connect time
    if host not in allow_private_hosts and not is_public_address(str(literal)):
        raise SSRFBlockedError(f"address {host} is not public and not allow-listed as such")
    return host


class GuardedResolver(AbstractResolver):
    """Step 2: resolves, then refuses hosts not allow-listed (unless ``allow_hosts`` is
    ``None``) and non-public addresses of hosts not in ``allow_private_hosts``."""

    def __init__(
        self,
        allow_hosts: frozenset[str] | None,
        allow_private_hosts: frozenset[str],
        inner: AbstractResolver | None = None,
    ) -> None:
        self._allow = allow_hosts
        self._private = allow_private_hosts
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = _host(host)
        if self._allow is not None and name not in self._allow:
            raise SSRFBlockedError(f"host {host!r} is not in the allow-list")
        results = await self._inner.resolve(host, port, family)
        if name not in self._private:
            for r in results:
                if not is_public_address(r["host"]):
                    # The address goes to the operator's log only: the error is
                    # recorded where the tenant reads it, and would map internal names
                    # to internal addresses for whoever registered the URL.
                    _log.warning("net.private_address_refused", host=host, address=r["host"])
                    raise SSRFBlockedError(f"host {host!r} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """Step 3: the whole body, or ``None`` once it exceeds ``cap`` bytes.

    ``StreamReader.read(n)`` returns what has arrived so far, not ``n`` bytes, so one
    call would cut a body sent in pieces short, and let a larger one past the cap.
    """
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        total += len(chunk)
        if total > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
