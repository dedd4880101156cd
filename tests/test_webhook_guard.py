"""Where webhooks may connect: every refused range, IPv4-mapped addresses,
the allow list, and names resolved by the guarded resolver."""

from __future__ import annotations

import ipaddress

import pytest

from shipcast.plugins.webhook.guard import DestinationRefused, GuardedResolver, refusal


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
