"""Unsafe settings that are valid but should not pass silently.

`warnings(config)` gives one readable sentence per problem; `smsbridge config check` prints
them (and still exits 0), and every component logs them at start (`log_startup_warnings`).
"""

from __future__ import annotations

import ipaddress

from smsbridge.config import Config
from smsbridge.logs import get_logger

log = get_logger(__name__)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, "", "0.0.0.0"...: assume it is reachable from outside


def warnings(config: Config) -> list[str]:
    gateway = config.gateway
    found: list[str] = []
    if not gateway.allow_ips and not _is_loopback(gateway.host):
        found.append(
            f"gateway.listen is {gateway.listen}, which is not a loopback address, and "
            "gateway.allow_ips is empty: anyone who can reach the gateway can post webhooks. "
            "Set gateway.allow_ips to Flowroute's source addresses, or listen on 127.0.0.1 "
            "behind a proxy."
        )
    for value in gateway.trusted_proxies:
        network = ipaddress.ip_network(value, strict=False)
        if network.prefixlen == 0:
            found.append(
                f"gateway.trusted_proxies contains {value}, which covers every address: anyone "
                "can forge X-Forwarded-For and pass gateway.allow_ips. List only the addresses "
                "of your own proxies."
            )
    if config.providers:
        missing = [
            name
            for name, value in (
                ("gateway.dlr_secret", gateway.dlr_secret),
                ("gateway.public_url", gateway.public_url),
            )
            if value is None
        ]
        if missing:
            found.append(
                f"delivery receipts are off because {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: sent messages will never "
                "be reported delivered or undelivered. Set gateway.dlr_secret (16 characters "
                "or more) and gateway.public_url (the URL Flowroute reaches the gateway at)."
            )
    return found


def log_startup_warnings(config: Config) -> None:
    for problem in warnings(config):
        log.warning("unsafe configuration", problem=problem)
