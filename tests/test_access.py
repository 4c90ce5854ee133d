"""Source-IP allow-list, and X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import pytest

from gateway.access import SourceCheck

FLOWROUTE = ["52.88.246.140", "52.10.220.50"]
PROXIES = ["10.0.0.0/8", "127.0.0.1"]


def test_empty_allow_list_allows_everyone() -> None:
    check = SourceCheck([], [])
    assert not check.enabled
    assert check.allowed("203.0.113.9")
    assert check.allowed("2001:db8::1", "198.51.100.1")
    assert check.allowed(None)


def test_single_ip_allows_only_that_ip() -> None:
    check = SourceCheck(["52.88.246.140"], [])
    assert check.enabled
    assert check.allowed("52.88.246.140")
    assert not check.allowed("52.88.246.141")
    assert not check.allowed("203.0.113.9")


def test_cidr_allows_the_whole_network() -> None:
    check = SourceCheck(["52.10.220.0/24"], [])
    assert check.allowed("52.10.220.50")
    assert check.allowed("52.10.220.255")
    assert not check.allowed("52.10.221.1")


def test_non_strict_network_is_accepted() -> None:
    check = SourceCheck(["52.10.220.50/24"], [])
    assert check.allowed("52.10.220.1")


def test_ipv6_network_is_supported() -> None:
    check = SourceCheck(["2001:db8::/32"], [])
    assert check.allowed("2001:db8:1::5")
    assert check.allowed("[2001:db8::1]")
    assert not check.allowed("2001:db9::1")


def test_ipv4_mapped_ipv6_peer_matches_its_ipv4_address() -> None:
    check = SourceCheck(FLOWROUTE, [])
    assert check.allowed("::ffff:52.88.246.140")
    assert check.allowed("::FFFF:52.10.220.50")
    assert not check.allowed("::ffff:203.0.113.9")


@pytest.mark.parametrize("peer", [None, "", "not-an-ip", "52.88.246.140:443"])
def test_unknown_or_unparsable_peer_is_refused(peer: str | None) -> None:
    assert not SourceCheck(FLOWROUTE, []).allowed(peer)


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    check = SourceCheck(FLOWROUTE, [])
    assert not check.allowed("203.0.113.9", "52.88.246.140")
    assert check.client_ip("203.0.113.9", "52.88.246.140") == "203.0.113.9"


def test_forwarded_for_is_ignored_when_the_peer_is_not_a_trusted_proxy() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    assert not check.allowed("203.0.113.9", "52.88.246.140")
    assert check.client_ip("203.0.113.9", "52.88.246.140") == "203.0.113.9"
    # and an allowed peer stays allowed whatever it claims to forward for
    assert check.allowed("52.88.246.140", "203.0.113.9")


def test_forwarded_for_is_honoured_from_a_trusted_proxy() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    assert check.client_ip("10.1.2.3", "52.88.246.140") == "52.88.246.140"
    assert check.allowed("10.1.2.3", "52.88.246.140")
    assert check.allowed("127.0.0.1", " 52.10.220.50 ")


def test_proxy_peer_itself_is_not_allowed_without_forwarded_for() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    assert not check.allowed("10.1.2.3")
    assert not check.allowed("10.1.2.3", "")


def test_ipv4_mapped_proxy_peer_is_trusted() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    assert check.allowed("::ffff:10.1.2.3", "52.88.246.140")


def test_rightmost_non_proxy_hop_is_the_client() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    # client -> proxy 10.0.0.7 -> proxy 10.1.2.3 (the peer)
    xff = "52.88.246.140, 10.0.0.7"
    assert check.client_ip("10.1.2.3", xff) == "52.88.246.140"
    assert check.allowed("10.1.2.3", xff)


def test_spoofed_leftmost_forwarded_for_entry_does_not_get_through() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    # the attacker 203.0.113.9 sends "X-Forwarded-For: 52.88.246.140"; the proxy appends it
    xff = "52.88.246.140, 203.0.113.9"
    assert check.client_ip("10.1.2.3", xff) == "203.0.113.9"
    assert not check.allowed("10.1.2.3", xff)


def test_spoofed_proxy_address_in_forwarded_for_does_not_get_through() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    xff = "52.88.246.140, 10.9.9.9, 203.0.113.9"
    assert not check.allowed("10.1.2.3", xff)


def test_garbage_forwarded_for_hop_is_refused() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    assert not check.allowed("10.1.2.3", "52.88.246.140, unknown")
    assert not check.allowed("10.1.2.3", "52.88.246.140, 52.88.246.140:1234")


def test_forwarded_for_with_only_separators_falls_back_to_the_peer() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    assert check.client_ip("10.1.2.3", " , ,") == "10.1.2.3"
    assert not check.allowed("10.1.2.3", " , ,")


def test_peer_none_has_no_client_ip() -> None:
    assert SourceCheck(FLOWROUTE, PROXIES).client_ip(None, "52.88.246.140") is None


def test_every_forwarded_for_line_counts_in_order() -> None:
    check = SourceCheck(FLOWROUTE, PROXIES)
    # X-Forwarded-For sent twice: the client's own (forged) line, then the proxy's
    lines = ["52.88.246.140", "203.0.113.9"]
    assert check.client_ip("10.1.2.3", lines) == "203.0.113.9"
    assert not check.allowed("10.1.2.3", lines)
    # lines are one list: commas within a line and across lines alike
    assert check.client_ip("10.1.2.3", ["203.0.113.9", "52.88.246.140, 10.0.0.7"]) == (
        "52.88.246.140"
    )
    assert check.allowed("10.1.2.3", ["203.0.113.9", "52.88.246.140, 10.0.0.7"])
    assert check.client_ip("10.1.2.3", []) == "10.1.2.3"
    assert not check.allowed("10.1.2.3", [" , ", ""])
