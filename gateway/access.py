"""Source-IP allow-list, with opt-in trust of X-Forwarded-For from configured proxies.

Flowroute's webhooks are not signed: its published source addresses are the documented
protection. Behind a reverse proxy the peer is the proxy, so X-Forwarded-For is read, but
only when the peer is a configured trusted proxy (anyone can send that header).

X-Forwarded-For may arrive as several header lines (a client sends one, the proxy appends
another). HTTP says such lines are one list in order, so every line counts: reading only the
first would take the client's forged line for the proxy's.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedFor = str | Sequence[str] | None


def hops_of(forwarded_for: ForwardedFor) -> list[str]:
    """Every hop of X-Forwarded-For, left to right, across all of its header lines."""
    if not forwarded_for:
        return []
    lines = [forwarded_for] if isinstance(forwarded_for, str) else list(forwarded_for)
    return [hop.strip() for line in lines for hop in line.split(",") if hop.strip()]


def _networks(values: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class SourceCheck:
    def __init__(self, allow: Sequence[str], trusted_proxies: Sequence[str]) -> None:
        self.allow = _networks(allow)
        self.proxies = _networks(trusted_proxies)
        self.enabled = bool(self.allow)

    def client_ip(self, peer: str | None, forwarded_for: ForwardedFor = None) -> str | None:
        """The real client: the peer, or, behind trusted proxies, the rightmost address in
        X-Forwarded-For that is not itself a trusted proxy.

        `forwarded_for` is the header's value, or all of its lines in order
        (`request.headers.getall("X-Forwarded-For", [])`).
        """
        if peer is None:
            return None
        if not forwarded_for or not self._is_proxy(peer):
            return peer
        hops = hops_of(forwarded_for)
        for hop in reversed(hops):
            if not self._is_proxy(hop):
                return hop
        return hops[0] if hops else peer

    def allowed(self, peer: str | None, forwarded_for: ForwardedFor = None) -> bool:
        if not self.enabled:
            return True
        client = self.client_ip(peer, forwarded_for)
        return client is not None and self._in(client, "allow")

    def _is_proxy(self, ip: str) -> bool:
        return bool(self.proxies) and self._in(ip, "proxies")

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one instance per process
    def _in(self, ip: str, which: str) -> bool:
        addr = _address(ip)
        networks = self.allow if which == "allow" else self.proxies
        return addr is not None and any(addr in net for net in networks)
