"""Where a webhook may connect: public addresses, plus the networks listed in
``SHIPCAST_WEBHOOK_ALLOWED_NETWORKS``.

The check runs inside the HTTP client's resolver, so the address checked is
the address connected to: a name cannot re-resolve to a private address
between the check and the connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(OSError):
    """The destination resolves only to addresses webhooks may not reach."""


#: Ranges a webhook never reaches unless SHIPCAST_WEBHOOK_ALLOWED_NETWORKS lists them.
REFUSED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(network), name) for network, name in (
        ("0.0.0.0/8", "this network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved and broadcast"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b::/96", "NAT64"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)


def refusal(address: str, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not be connected to, or ``None`` when it may.

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is judged as the IPv4
    address it carries."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed):
        return None
    for network, name in REFUSED:
        if ip.version == network.version and ip in network:
            return f"{ip} is in {network} ({name}); SHIPCAST_WEBHOOK_ALLOWED_NETWORKS can allow it"
    if not ip.is_global:  # whatever else Python knows to be special-purpose
        return f"{ip} is not a public address; SHIPCAST_WEBHOOK_ALLOWED_NETWORKS can allow it"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then drops every refused address."""

    def __init__(self, allowed: Sequence[Network], inner: AbstractResolver | None = None) -> None:
        self.allowed = tuple(allowed)
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [result for result in results if refusal(result["host"], self.allowed) is None]
        if not kept:
            reason = refusal(results[0]["host"], self.allowed) if results else "no address"
            raise DestinationRefused(f"{host}: {reason}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def literal_refusal(host: str, allowed: tuple[Network, ...]) -> str | None:
    """Check a host that is an IP literal (the HTTP client skips the resolver
    for those); names return ``None`` and are checked at resolve time."""
    try:
        return refusal(host.strip("[]"), allowed)
    except ValueError:
        return None


def find_refusal(exc: BaseException | None) -> DestinationRefused | None:
    """The :class:`DestinationRefused` somewhere in an exception's chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DestinationRefused):
            return exc
        inner: Any = getattr(exc, "os_error", None)
        if isinstance(inner, DestinationRefused):
            return inner
        exc = exc.__cause__ or exc.__context__
    return None


def static_refusal(url: yarl.URL, allowed: tuple[Network, ...], *, require_https: bool) -> str | None:
    """What can be judged from the URL alone: its scheme, and a host that is
    an IP literal (the HTTP client skips the resolver for those)."""
    if require_https and url.scheme != "https":
        return "destination refused: HTTPS is required (SHIPCAST_WEBHOOK_REQUIRE_HTTPS)"
    literal = literal_refusal(url.host or "", allowed)
    return f"destination refused: {literal}" if literal is not None else None


async def check_destination(url: str, allowed: tuple[Network, ...], *, require_https: bool) -> str | None:
    """Why an endpoint URL may not be registered, or ``None``. Checked again
    at every send; a name that does not resolve yet is let through to that."""
    parsed = yarl.URL(url)
    refused = static_refusal(parsed, allowed, require_https=require_https)
    if refused is not None:
        return refused
    host = parsed.host or ""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None  # an allowed literal
    except ValueError:
        pass
    try:
        async with asyncio.timeout(5):
            infos = await asyncio.get_running_loop().getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return None
    reasons = [refusal(str(info[4][0]), allowed) for info in infos]
    if reasons and all(reasons):  # as at send time: one allowed address is enough
        return f"destination refused: {host}: {reasons[0]}"
    return None
