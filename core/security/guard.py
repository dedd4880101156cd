"""Where shipcast may connect to a partner's destination (a webhook URL, an
AMQP broker): public addresses, plus the networks listed in
``SHIPCAST_WEBHOOK_ALLOWED_NETWORKS``.

The check runs where the client resolves the name (the HTTP client's
resolver, the AMQP destination's transport), so the address checked is the
address connected to: a name cannot re-resolve to a private address between
the check and the connect.

An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-translated,
6to4) is judged as the IPv4 address it carries; the forms whose IPv4 address
cannot be judged, or that nothing public uses (IPv4-compatible, local-use
NAT64, Teredo, site-local), are refused whole.

What a partner is told names the rule that refused a destination, never the
address one of its names resolved to: that would let it map the internal
network through our resolver. The operator's log has the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger(__name__)


class DestinationRefused(OSError):
    """The destination resolves only to addresses shipcast may not reach."""


#: Ranges shipcast never connects to unless SHIPCAST_WEBHOOK_ALLOWED_NETWORKS lists them.
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
        # Deprecated (RFC 4291); some stacks still reach the IPv4 address in the last 32 bits.
        ("::/96", "IPv4-compatible, deprecated"),
        ("64:ff9b::/96", "NAT64"),
        # RFC 8215: the operator's own translator; where the IPv4 address sits depends on its prefix length.
        ("64:ff9b:1::/48", "local-use NAT64"),
        # Tunnelled to a relay and a client both named by IPv4 addresses in the address; nothing uses it now.
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local, deprecated"),
        ("ff00::/8", "multicast"),
    )
)

#: RFC 2765's IPv4-translated addresses, ``::ffff:0:a.b.c.d`` (Python has no
#: property for them, as it has ``ipv4_mapped`` and ``sixtofour``).
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
ALLOW_HINT = "SHIPCAST_WEBHOOK_ALLOWED_NETWORKS can allow it"

#: Each refused range, in words for a developer registering an endpoint.
IN_WORDS: dict[str | None, str] = {
    "this network": "the \"this network\" range, no real destination",
    "private": "a private network",
    "carrier-grade NAT": "a carrier's shared private network (carrier-grade NAT)",
    "loopback": "a loopback address: shipcast's own machine",
    "link-local": "a link-local network (where cloud metadata services answer)",
    "IETF protocol assignments": "a range reserved for internet protocols",
    "documentation": "a range reserved for documentation examples",
    "benchmarking": "a range reserved for network benchmarks",
    "multicast": "a multicast range",
    "reserved and broadcast": "a reserved or broadcast range",
    "unspecified": "the unspecified address",
    "IPv4-compatible, deprecated": "a deprecated IPv6 form",
    "NAT64": "a NAT64 translation range",
    "local-use NAT64": "a private NAT64 translation range",
    "Teredo": "a Teredo tunnel range",
    "unique local": "a private IPv6 network (unique local)",
    "site-local, deprecated": "a deprecated private IPv6 range (site-local)",
    None: "not a public internet address",
}
#: What a developer whose endpoint is refused can do.
REFUSAL_ADVICE = ("Give an address reachable from the internet (or ask the operator to allow that network "
                  "with SHIPCAST_WEBHOOK_ALLOWED_NETWORKS).")
HTTPS_REQUIRED = "HTTPS is required (SHIPCAST_WEBHOOK_REQUIRE_HTTPS)"


@dataclass(frozen=True)
class Refusal:
    """Why an address is refused: the IPv4 address it carries (if it carries
    one, and how) and the range that refused the address judged."""

    address: Address
    carried: ipaddress.IPv4Address | None
    form: str | None  # how the IPv4 address is carried: "6to4", ...
    rule: str | None  # the refusing range, "127.0.0.0/8 (loopback)"; None: not public (Python's registry)
    kind: str | None = None  # the range's name alone, "loopback"

    @property
    def _verdict(self) -> str:
        return "is not a public address" if self.rule is None else f"is in {self.rule}"

    def detail(self) -> str:
        """With the address: for the operator's log, or for a partner who gave that address itself."""
        if self.carried is not None:
            return f"{self.address} carries {self.carried} ({self.form}), which {self._verdict}; {ALLOW_HINT}"
        return f"{self.address} {self._verdict}; {ALLOW_HINT}"

    def without_address(self) -> str:
        """What a partner whose name resolved to the address may be told: the rule only."""
        if self.carried is not None:
            return f"resolves to an address whose IPv4 part ({self.form}) {self._verdict}; {ALLOW_HINT}"
        return f"resolves to an address that {self._verdict}; {ALLOW_HINT}"

    def in_words(self, said: str) -> str:
        """``said`` (:meth:`detail` or :meth:`without_address`), for a
        developer registering an endpoint: what the range is, in words, and
        what to do instead."""
        said = said.removesuffix(f"; {ALLOW_HINT}")
        words = IN_WORDS.get(self.kind, IN_WORDS[None])
        if self.rule is None:
            return f"{said}, which shipcast does not send to. {REFUSAL_ADVICE}"
        return f"{said}: that is {words}, which shipcast does not send to. {REFUSAL_ADVICE}"


def carried_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address ``ip`` carries where packets to it go to that IPv4
    address (or to a router it names), and the form carrying it."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-translated"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


def judge(address: str, allowed: Sequence[Network]) -> Refusal | None:
    """Why ``address`` may not be connected to, or ``None`` when it may.

    An IPv6 address carrying an IPv4 address is judged as that IPv4 address;
    an allowed network lifts the refusal whether it lists the IPv6 address or
    the IPv4 address it carries."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    carried = carried_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    judged: Address = carried[0] if carried is not None else ip
    if any(candidate in network for candidate in {ip, judged} for network in allowed):
        return None
    carrier, form = carried if carried is not None else (None, None)
    for network, name in REFUSED:
        if judged.version == network.version and judged in network:
            return Refusal(ip, carrier, form, f"{network} ({name})", name)
    if not judged.is_global:  # whatever else Python knows to be special-purpose
        return Refusal(ip, carrier, form, None)
    return None


def refusal(address: str, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not be connected to, naming it, or ``None`` when it may."""
    refused = judge(address, allowed)
    return refused.detail() if refused is not None else None


def refused_name(host: str, addresses: Sequence[str], allowed: Sequence[Network], *, words: bool = False) -> str:
    """What to tell a partner about ``host``, all of whose ``addresses`` are
    refused: the rule, not the addresses (logged for the operator instead);
    with ``words``, explained for a developer registering it."""
    if not addresses:
        return "no address"
    refused = judge(addresses[0], allowed)
    assert refused is not None, "only refused addresses are explained"
    log.warning("destination %s refused: %s", host, "; ".join(
        r.detail() for r in (judge(a, allowed) for a in addresses) if r is not None))
    said = refused.without_address()
    return refused.in_words(said) if words else said


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then drops every refused address."""

    def __init__(self, allowed: Sequence[Network], inner: AbstractResolver | None = None) -> None:
        self.allowed = tuple(allowed)
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [result for result in results if judge(result["host"], self.allowed) is None]
        if not kept:
            raise DestinationRefused(f"{host}: {refused_name(host, [r['host'] for r in results], self.allowed)}")
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
        return f"destination refused: {HTTPS_REQUIRED}"
    literal = literal_refusal(url.host or "", allowed)
    return f"destination refused: {literal}" if literal is not None else None


async def check_destination(url: str, allowed: tuple[Network, ...], *, require_https: bool) -> str | None:
    """Why an endpoint URL may not be registered, in words for the developer
    registering it, or ``None``. Checked again at every send; a name that does
    not resolve yet is let through to that."""
    parsed = yarl.URL(url)
    if require_https and parsed.scheme != "https":
        return f"destination refused: {HTTPS_REQUIRED}: this shipcast sends only to https:// addresses"
    host = parsed.host or ""
    try:
        literal = judge(host.strip("[]"), allowed)
    except ValueError:
        pass  # a name: judged by what it resolves to
    else:
        return None if literal is None else f"destination refused: {literal.in_words(literal.detail())}"
    try:
        async with asyncio.timeout(5):
            infos = await asyncio.get_running_loop().getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return None
    addresses = [str(info[4][0]) for info in infos]
    if addresses and all(judge(a, allowed) for a in addresses):  # as at send time: one allowed address is enough
        return f"destination refused: {host}: {refused_name(host, addresses, allowed, words=True)}"
    return None
