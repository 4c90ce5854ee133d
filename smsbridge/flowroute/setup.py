"""`smsbridge flowroute setup`: point a Flowroute account's SMS and MMS callbacks at the bridge.

For each provider (or the one named): check its keys with a request that sends nothing, then
set the account's SMS and MMS callback URLs (`PUT /v2.1/messages/sms_callback` and
`.../mms_callback`, body `{"data": {"attributes": {"callback_url": URL}}}`) to
`gateway.public_url` + `/` + the `url_prefix` of the account's numbers. The callback API's base
is `api_url` with its version segment replaced by `v2.1`. Delivery receipts need no account
setting: every send carries its own signed `dlr_callback`.

Refused when the account's numbers use more than one `url_prefix` (an account has one SMS
callback), or when `public_url` is not set. `--dry-run` checks and prints, and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from smsbridge.config import Config, ProviderConfig
from smsbridge.flowroute.client import AuthFailure, FlowrouteClient, SendError, error_detail

CALLBACK_KINDS = ("sms", "mms")
_VERSION = re.compile(r"/v\d+(\.\d+)?$")


class SetupError(Exception):
    """This provider cannot be set up as configured (the message says what to change)."""


@dataclass(frozen=True, slots=True)
class Plan:
    provider: str
    callback_url: str
    base: str  # the v2.1 API base


def callback_api_base(api_url: str) -> str:
    """`https://api.flowroute.com/v2.2` -> `https://api.flowroute.com/v2.1`."""
    if not _VERSION.search(api_url):
        raise SetupError(f"api_url {api_url!r} does not end with a version segment like /v2.2")
    return _VERSION.sub("/v2.1", api_url)


def plan(config: Config, provider: ProviderConfig) -> Plan:
    if config.gateway.public_url is None:
        raise SetupError(
            "gateway.public_url is not set: Flowroute needs the gateway's public https URL"
        )
    prefixes = sorted({n.url_prefix for n in config.numbers if n.provider == provider.name})
    if not prefixes:
        raise SetupError(f"no number in the configuration uses provider {provider.name!r}")
    if len(prefixes) > 1:
        raise SetupError(
            f"the numbers of provider {provider.name!r} use {len(prefixes)} url_prefix values "
            f"({', '.join(prefixes)}); a Flowroute account has one SMS callback: give them one "
            "prefix, or set the callbacks per number in Flowroute's portal"
        )
    return Plan(
        provider.name,
        f"{config.gateway.public_url}/{prefixes[0]}",
        callback_api_base(provider.api_url),
    )


async def set_up(
    config: Config,
    provider: ProviderConfig,
    *,
    dry_run: bool,
    say: Callable[[str], None],
    session: aiohttp.ClientSession,
) -> None:
    """Check the keys, then set (or, dry, show) the callbacks. Raises SetupError, AuthFailure
    (keys refused) or SendError (Flowroute unreachable or refusing)."""
    target = plan(config, provider)
    client = FlowrouteClient(session, provider)
    await client.check_auth()
    say(f"{provider.name}: keys accepted")
    for kind in CALLBACK_KINDS:
        url = f"{target.base}/messages/{kind}_callback"
        if dry_run:
            say(f"{provider.name}: would set the {kind} callback to {target.callback_url}")
            continue
        body = orjson.dumps({"data": {"attributes": {"callback_url": target.callback_url}}})
        try:
            async with session.put(url, data=body, headers=client.headers()) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise SendError(f"{kind} callback not set: {type(exc).__name__}") from None
        if status in (401, 403):
            raise AuthFailure(error_detail(status, raw), status)
        if not 200 <= status < 300:
            raise SendError(f"{kind} callback not set: {error_detail(status, raw)}", status)
        say(f"{provider.name}: {kind} callback set to {target.callback_url}")
