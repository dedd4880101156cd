"""Where webhooks may connect: every refused range, IPv6 addresses that
carry an IPv4 address, the allow list, and names resolved by the guarded
resolver, whose refusals name the rule and never the address."""

from __future__ import annotations

import ipaddress
import re
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shipcast.plugins.webhook.guard import (
    DestinationRefused,
    GuardedResolver,
    check_destination,
    find_refusal,
    refusal,
)

from .helpers import Receiver

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(("address", "range_name"), [
    ("0.1.2.3", "this network"),
    ("10.1.2.3", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("172.16.5.4", "private"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.10", "documentation"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.254", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "reserved and broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("64:ff9b::a00:1", "NAT64"),
    ("2001:db8::1", "documentation"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1%eth0", "link-local"),
    ("ff02::1", "multicast"),
    ("::ffff:10.0.0.1", "private"),       # IPv4-mapped: judged as 10.0.0.1
    ("::ffff:127.0.0.1", "loopback"),
])
def test_every_refused_range(address: str, range_name: str) -> None:
    reason = refusal(address, ())
    assert reason is not None and f"({range_name})" in reason


#: IPv6 addresses that carry an IPv4 address, and the rule that refuses each:
#: the carried address's range where it can be read, else the form's own range.
CARRYING_IPV4 = [
    ("::127.0.0.1", "::/96 (IPv4-compatible, deprecated)"),
    ("::a9fe:a9fe", "::/96 (IPv4-compatible, deprecated)"),             # 169.254.169.254
    ("::ffff:0:7f00:1", "127.0.0.0/8 (loopback)"),                      # IPv4-translated
    ("::ffff:0:a9fe:a9fe", "169.254.0.0/16 (link-local)"),              # IPv4-translated
    ("2002:7f00:1::", "127.0.0.0/8 (loopback)"),                        # 6to4
    ("2002:a9fe:a9fe::", "169.254.0.0/16 (link-local)"),                # 6to4
    ("2002:a00:1:1::5", "10.0.0.0/8 (private)"),                        # 6to4, a host behind it
    ("64:ff9b:1::a9fe:a9fe", "64:ff9b:1::/48 (local-use NAT64)"),      # 169.254.169.254 behind a /96 prefix
    ("64:ff9b:1:a9fe:a9:fe00::", "64:ff9b:1::/48 (local-use NAT64)"),  # the same behind a /48 (RFC 6052)
    ("2001:0:a9fe:a9fe::80ff:fffe", "2001::/32 (Teredo)"),              # server 169.254.169.254, client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32 (Teredo)"),     # RFC 4380's example, server 65.54.227.120
    ("fec0::1", "fec0::/10 (site-local, deprecated)"),
    ("fec0::a9fe:a9fe", "fec0::/10 (site-local, deprecated)"),
]


@pytest.mark.parametrize(("address", "rule"), CARRYING_IPV4)
def test_ipv6_that_carries_ipv4_is_judged_by_the_ipv4_or_refused_whole(address: str, rule: str) -> None:
    reason = refusal(address, ())
    assert reason is not None and f"is in {rule};" in reason, reason


@pytest.mark.parametrize(("address", "carried"), [
    ("::ffff:0:7f00:1", "127.0.0.1 (IPv4-translated)"),
    ("2002:a9fe:a9fe::", "169.254.169.254 (6to4)"),
    ("::ffff:10.0.0.1", "10.0.0.1 (IPv4-mapped)"),
])
def test_a_refused_literal_says_which_ipv4_address_it_carries(address: str, carried: str) -> None:
    """The partner typed the address: telling it back leaks nothing."""
    assert f"carries {carried}, which is in " in (refusal(address, ()) or "")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "::ffff:0:808:808", "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address, ()) is None


def test_the_allow_list_lifts_only_its_ranges() -> None:
    allowed = (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert refusal("10.20.3.4", allowed) is None
    assert refusal("::ffff:10.20.3.4", allowed) is None
    assert refusal("::ffff:0:a14:304", allowed) is None  # IPv4-translated 10.20.3.4
    assert refusal("2002:a14:304::1", allowed) is None  # 6to4 through 10.20.3.4
    assert refusal("fd00::5", allowed) is None
    assert refusal("10.21.0.1", allowed) is not None
    assert refusal("2002:a15::1", allowed) is not None  # 6to4 through 10.21.0.0


@pytest.mark.parametrize("network", ["fec0::/10", "2001::/32", "64:ff9b:1::/48", "::/96"])
def test_the_allow_list_lifts_a_range_refused_whole(network: str) -> None:
    inside = ipaddress.ip_network(network)[0x7F000001]  # e.g. ::127.0.0.1, 2001::7f00:1
    assert refusal(str(inside), ()) is not None
    assert refusal(str(inside), (ipaddress.ip_network(network),)) is None


@pytest.mark.parametrize(("address", "rule"), CARRYING_IPV4)
async def test_a_name_resolving_to_ipv6_that_carries_ipv4_is_refused_at_connect(address: str, rule: str) -> None:
    """The connected address: what the resolver answers for a name is judged
    as a literal would be, and the refusal names the rule only."""
    resolver = GuardedResolver((), inner=Rebinding(address))
    with pytest.raises(DestinationRefused) as caught:
        await resolver.resolve("hooks.partner.example", 443, socket.AF_INET6)
    message = str(caught.value)
    assert message.startswith("hooks.partner.example: resolves to an address") and rule in message, message
    assert not hidden_addresses(message.replace(rule, ""), address), message


@pytest.mark.parametrize(("address", "rule"), CARRYING_IPV4)
async def test_a_literal_ipv6_that_carries_ipv4_is_refused_at_registration(address: str, rule: str) -> None:
    reason = await check_destination(f"https://[{address}]/hook", (), require_https=True)
    assert reason is not None and reason.startswith("destination refused: ") and rule in reason, reason


async def test_a_name_resolving_to_a_refused_address_is_refused_at_resolve_time() -> None:
    resolver = GuardedResolver(())
    try:
        with pytest.raises(DestinationRefused) as caught:
            await resolver.resolve("localhost", 80)
        assert str(caught.value) == ("localhost: resolves to an address that is in 127.0.0.0/8 (loopback); "
                                     "SHIPCAST_WEBHOOK_ALLOWED_NETWORKS can allow it")
    finally:
        await resolver.close()
    allowing = GuardedResolver((ipaddress.ip_network("127.0.0.0/8"),))
    try:
        [result] = await allowing.resolve("localhost", 80)
        assert result["host"] == "127.0.0.1"
    finally:
        await allowing.close()


def hidden_addresses(text: str, address: str) -> list[str]:
    """Whatever of ``address`` (as given, as Python writes it, or any IPv4
    address, such as one it carries) shows in ``text``."""
    found = [form for form in {address, str(ipaddress.ip_address(address))} if form in text]
    return found + re.findall(r"\d{1,3}(?:\.\d{1,3}){3}", text)


class Rebinding(AbstractResolver):
    """A DNS name under an attacker's control: each lookup (TTL 0) gets the
    next answer, the last one repeated."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


async def test_a_rebinding_name_is_refused_at_the_lookup_that_connects() -> None:
    """The check and the connect use one lookup: a name that answers a public
    address to one lookup and loopback to the next is refused at the second."""
    resolver = GuardedResolver((), inner=Rebinding("93.184.216.34", "127.0.0.1"))
    [first] = await resolver.resolve("rebind.example", 80)
    assert first["host"] == "93.184.216.34"
    with pytest.raises(DestinationRefused, match=r"127\.0\.0\.0/8 \(loopback\)"):
        await resolver.resolve("rebind.example", 80)


@pytest.mark.parametrize(("address", "rule"), [
    ("10.1.2.3", "10.0.0.0/8 (private)"),
    ("169.254.169.254", "169.254.0.0/16 (link-local)"),
    ("fd12:3456::7", "fc00::/7 (unique local)"),
    ("2002:a01:203::1", "10.0.0.0/8 (private)"),
])
async def test_a_refusal_names_the_rule_never_the_address_a_name_resolved_to(
        address: str, rule: str, caplog: pytest.LogCaptureFixture) -> None:
    """Otherwise the refusal would tell a partner what our internal DNS
    answers for any name it registers; the operator's log has the address."""
    resolver = GuardedResolver((), inner=Rebinding(address))
    with pytest.raises(DestinationRefused) as caught:
        await resolver.resolve("intranet.partner.example", 443)
    message = str(caught.value)
    assert message.startswith("intranet.partner.example: resolves to an address") and rule in message, message
    assert not hidden_addresses(message.replace(rule, ""), address), message
    assert any(address in record.getMessage() for record in caplog.records)


async def test_registration_names_the_rule_never_the_address_a_name_resolved_to() -> None:
    """As the partner API and ``partners apply`` check a URL: localhost
    resolves through the system's resolver to a loopback address."""
    reason = await check_destination("https://localhost/hook", (), require_https=True)
    assert reason is not None and reason.startswith("destination refused: localhost: resolves to an address")
    assert "(loopback)" in reason and "127.0.0.1" not in reason, reason


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:0:7f00:1", "2002:7f00:1::"])
async def test_the_http_client_connects_only_through_the_guard(receiver: Receiver, address: str) -> None:
    """Through aiohttp, as the webhook channel sends: the name answers the
    receiver's loopback address (or an IPv6 form carrying it), which the
    guard refuses before any connection."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver((), inner=Rebinding(address)))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.post(f"http://rebind.example:{receiver.port}/hook", data=b"{}")
    assert find_refusal(caught.value) is not None
    assert receiver.requests == []
