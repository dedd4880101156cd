"""Where webhooks may connect: every refused range, IPv4-mapped addresses,
the allow list, and names resolved by the guarded resolver."""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shipcast.plugins.webhook.guard import DestinationRefused, GuardedResolver, find_refusal, refusal

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


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address, ()) is None


def test_the_allow_list_lifts_only_its_ranges() -> None:
    allowed = (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert refusal("10.20.3.4", allowed) is None
    assert refusal("::ffff:10.20.3.4", allowed) is None
    assert refusal("fd00::5", allowed) is None
    assert refusal("10.21.0.1", allowed) is not None


async def test_a_name_resolving_to_a_refused_address_is_refused_at_resolve_time() -> None:
    resolver = GuardedResolver(())
    try:
        with pytest.raises(DestinationRefused, match=r"localhost: 127\.0\.0\.1 is in 127\.0\.0\.0/8 \(loopback\)"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    allowing = GuardedResolver((ipaddress.ip_network("127.0.0.0/8"),))
    try:
        [result] = await allowing.resolve("localhost", 80)
        assert result["host"] == "127.0.0.1"
    finally:
        await allowing.close()


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
    with pytest.raises(DestinationRefused, match="127.0.0.1 is in 127.0.0.0/8"):
        await resolver.resolve("rebind.example", 80)


async def test_the_http_client_connects_only_through_the_guard(receiver: Receiver) -> None:
    """Through aiohttp, as the webhook channel sends: the name answers the
    receiver's loopback address, which the guard refuses before any connection."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver((), inner=Rebinding("127.0.0.1")))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.post(f"http://rebind.example:{receiver.port}/hook", data=b"{}")
    assert find_refusal(caught.value) is not None
    assert receiver.requests == []
