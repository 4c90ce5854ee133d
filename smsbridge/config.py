"""The TOML configuration: loaded, resolved and validated once at start.

Secrets are referenced as `${ENV_VAR}`, kept as `SecretStr`, and printed masked.
Errors name the field and the problem, e.g. `numbers[0].number: not E.164: '555'`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from smsbridge.phone import NumberError, to_e164

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PREFIX = re.compile(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$")
RESERVED_PATHS = frozenset({"healthz", "readyz", "metrics", "media"})
MASK = "********"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


class BrokerConfig(_Section):
    url: SecretStr | None = Field(default=None, description="One RabbitMQ node (or use `urls`)")
    urls: list[SecretStr] | None = Field(
        default=None,
        min_length=1,
        description="The nodes of a RabbitMQ cluster: every connection tries them in turn, at "
        "start and on every reconnect",
    )
    prefetch: int = Field(
        default=200,
        ge=1,
        le=5000,
        description=(
            "Deliveries in flight per consumer: how many messages one worker handles at once"
        ),
    )
    publish_timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description=(
            "Seconds to wait for the broker to confirm a publish; the gateway then answers `503` "
            "(Flowroute sends again) and a worker waits and tries again"
        ),
    )
    hold_limit_seconds: float = Field(
        default=1200.0,
        gt=0,
        description=(
            "The longest a worker holds a delivery while the broker or the ledger is away; it "
            "is then put back at the end of its queue as a fresh copy. Keep it under "
            "RabbitMQ's `consumer_timeout` (30 min by default), which would return the "
            "delivery and count that against the queue's delivery limit"
        ),
    )

    @model_validator(mode="after")
    def _one_of_url_and_urls(self) -> BrokerConfig:
        if self.url is not None and self.urls is not None:
            raise ValueError("set `url` or `urls`, not both")
        for value in ([self.url] if self.url is not None else []) + list(self.urls or []):
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in ("amqp", "amqps"):
                raise ValueError(f"expected an amqp:// or amqps:// URL, got {scheme!r}://")
        if self.url is None and self.urls is None:
            object.__setattr__(self, "url", SecretStr(DEFAULT_BROKER_URL))
        return self

    def addresses(self) -> list[str]:
        """Every node to try, in order (one for `url`)."""
        if self.urls is not None:
            return [u.get_secret_value() for u in self.urls]
        assert self.url is not None  # set by the validator
        return [self.url.get_secret_value()]

    def masked_url(self) -> str:
        return ", ".join(mask_url(u) for u in self.addresses())


class GatewayConfig(_Section):
    listen: str = Field(
        default="127.0.0.1:8080", description="Address and port the gateway listens on"
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "The URL at which Flowroute and PBX services reach the gateway (e.g. "
            "`https://pbx.example.com`): used for delivery-receipt URLs, stored media URLs and "
            "`smsbridge flowroute setup`. Unset: media URLs use `http://` and the listen address, "
            "and no delivery receipts are requested"
        ),
    )
    allow_ips: list[str] = Field(
        default_factory=list,
        description=(
            "Source addresses allowed to post webhooks (Flowroute's published addresses); others "
            "get `403`. Empty: any source"
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "Reverse proxies whose `X-Forwarded-For` header is believed when checking `allow_ips`"
        ),
    )
    dlr_path: str = Field(
        default="flowroute/dlr",
        description="The path under which delivery receipts arrive: `/<dlr_path>/<token>`",
    )
    dlr_secret: SecretStr | None = Field(
        default=None,
        min_length=16,
        description=(
            "Signs the per-message delivery-receipt URLs. Without it (or without `public_url`) no "
            "delivery receipts are requested"
        ),
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="A larger webhook body is refused with `413`"
    )
    dedupe_seconds: float = Field(
        default=600.0,
        ge=0,
        description=(
            "How long an accepted Flowroute message id is remembered, so that Flowroute's resends "
            "are answered `200` without being published again (per process)"
        ),
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="seconds a client has to send its request headers (also the idle "
        "keep-alive time); slow clients are disconnected",
    )
    body_timeout: float = Field(
        default=10.0, gt=0, le=300, description="seconds a client has to send the request body"
    )
    receipt_window_seconds: float = Field(
        default=3 * 86400.0,
        gt=0,
        description="how long after the last send attempt a delivery receipt is still accepted; "
        "a receipt token expires after outbound.max_age_seconds plus this",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("allow_ips", "trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {value!r}") from None
        return values

    @field_validator("dlr_path")
    @classmethod
    def _dlr_path(cls, value: str) -> str:
        value = value.strip("/")
        if not _PREFIX.match(value):
            raise ValueError(f"not a URL path: {value!r}")
        return value

    @property
    def base_url(self) -> str:
        """How others reach the gateway: public_url, else the listen address."""
        if self.public_url:
            return self.public_url
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class MediaConfig(_Section):
    dir: Path = Field(
        default=Path("var/media"),
        description="Where inbound MMS media is stored (relative to the working directory)",
    )
    max_bytes: int = Field(
        default=15 * 1024 * 1024,
        ge=1,
        description="Largest media item fetched, counted after decompression",
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Stored media older than this is deleted (checked every hour)",
    )
    fetch_timeout: float = Field(default=30.0, gt=0, description="Seconds per download attempt")
    allowed_ports: list[int] = Field(
        default_factory=lambda: [80, 443],
        description="Ports media may be fetched from (unless `allow_any_port`)",
    )
    allow_any_port: bool = Field(default=False, description="opt-in (the demo and tests)")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Non-global networks media may be fetched from (opt-in; tests use 127.0.0.1)",
    )
    max_items: int = Field(
        default=10, ge=1, le=100, description="media items fetched per MMS; the rest get an error"
    )
    max_message_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, description="bytes stored per MMS, all items together"
    )
    fetch_concurrency: int = Field(
        default=4, ge=1, le=32, description="downloads in flight per MMS"
    )
    retry_for_seconds: float = Field(
        default=600.0,
        ge=0,
        description=(
            "How long after it arrived an MMS whose media failed for a passing reason (a "
            "timeout, a connection error, HTTP 429 or 5xx) is tried "
            "again, waiting in delay queues, before it goes to the PBX with the error; 0: "
            "never. Flowroute's media links stay valid for days"
        ),
    )
    retry_delays: list[float] = Field(
        default_factory=lambda: [30.0, 120.0],
        min_length=1,
        description="Seconds between those tries (the last one repeats)",
    )

    @field_validator("retry_delays")
    @classmethod
    def _positive_delays(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("every delay must be positive")
        return values

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        return GatewayConfig._networks(values)


class InboundConfig(_Section):
    default_region: str = Field(
        default="US", description="ISO 3166 region for inbound numbers that arrive in national form"
    )


class OutboundConfig(_Section):
    default_region: str = Field(
        default="US",
        description="ISO 3166 region for `to` and `from` numbers given in national form",
    )
    retry_delays: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0],
        min_length=1,
        description=(
            "Seconds between rounds of retries of a transient failure (429, 5xx, connection "
            "errors); the last delay repeats until `max_age_seconds`"
        ),
    )
    max_age_seconds: float = Field(
        default=6 * 3600.0,
        gt=0,
        description=(
            "A request still failing transiently this long after its first failure becomes "
            "`failed` (waits for quiet hours or a held account do not count)"
        ),
    )
    request_timeout: float = Field(
        default=15.0, gt=0, description="Seconds per call to Flowroute's API"
    )
    in_process_attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description=(
            "Quick attempts per round (a short exponential backoff, `Retry-After` honoured) before "
            "the request waits for the next `retry_delays` round"
        ),
    )
    concurrency: int = Field(default=256, ge=1, le=5000, description="sends in flight per account")
    rate_margin: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="seconds added to each account's rate window: event-loop lag and network "
        "jitter must not push a sixth attempt into one of Flowroute's seconds",
    )
    sent_ids_seconds: float = Field(
        default=86400.0, ge=0, description="remember sent ids this long (without a ledger)"
    )
    reconcile_after: float = Field(
        default=30.0,
        gt=0,
        description="seconds after a send attempt whose outcome is unknown (the worker died or "
        "lost its connection) before it is looked up in the provider's message records",
    )

    @field_validator("retry_delays")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("every retry delay must be positive (seconds)")
        return values


class LedgerConfig(_Section):
    url: SecretStr = Field(description="PostgreSQL URL, e.g. postgresql://user:pass@db/smsbridge")
    retention_days: float = Field(default=90.0, gt=0, description="history kept this long")
    migrate: bool = Field(default=True, description="apply pending migrations at start")
    pool_size: int = Field(default=8, ge=1, le=100, description="connections per process")

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"expected a postgresql:// URL, got {scheme!r}://")
        return value

    def masked_url(self) -> str:
        return mask_url(self.url.get_secret_value())


class ConsoleConfig(_Section):
    listen: str = Field(default="127.0.0.1:8081", description="never the public webhook listener")
    token: SecretStr = Field(
        min_length=24, description="API bearer token and login secret (24+ characters)"
    )
    public_url: str | None = Field(
        default=None,
        description="how operators reach the console (e.g. behind a reverse proxy); an https "
        "URL makes the session cookie Secure",
    )
    session_hours: float = Field(
        default=12.0,
        gt=0,
        le=24 * 30,
        description="How long a browser session lasts after logging in",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "Reverse proxies in front of the console (IP addresses or networks, e.g. "
            "`10.0.0.0/8`) whose `X-Forwarded-For` header is believed: failed logins are then "
            "counted per client behind them, not per proxy. Empty: per peer address (behind a "
            "proxy, every operator shares its limit)"
        ),
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return GatewayConfig._listen(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        return GatewayConfig._networks(values)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return GatewayConfig._public_url(value)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class QuietHours(_Section):
    start: str = Field(description="HH:MM, local time in `timezone`")
    end: str = Field(description="HH:MM; may be before `start` (the window crosses midnight)")
    timezone: str = Field(description="IANA time zone, e.g. America/New_York")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"expected HH:MM (24-hour), got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet_hours: start and end are equal (an empty window)")
        return self


DEFAULT_OPT_OUT_REPLY = "You are unsubscribed. Reply START to resubscribe."
DEFAULT_OPT_IN_REPLY = "You are resubscribed. Reply STOP to unsubscribe."


class PolicyConfig(_Section):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The policy's name, which `numbers.policy` refers to",
    )
    opt_out: bool = Field(default=False, description="honour STOP/START/HELP keywords")
    opt_out_reply: str = Field(default=DEFAULT_OPT_OUT_REPLY, description='"" = no reply')
    opt_in_reply: str = Field(default=DEFAULT_OPT_IN_REPLY, description='"" = no reply')
    help_reply: str = Field(default="", description='"" = no reply')
    allowed_countries: list[str] | None = Field(
        default=None, description="ISO 3166 codes outbound may go to; absent = any"
    )
    quiet_hours: QuietHours | None = Field(
        default=None,
        description=(
            "A daily window, in local time, during which outbound messages wait (absent: none)"
        ),
    )
    max_segments: int | None = Field(
        default=None,
        ge=1,
        le=255,
        description=(
            "Outbound messages longer than this many SMS segments are refused (absent: no limit)"
        ),
    )
    smart_quotes: Literal["keep", "replace"] = Field(
        default="keep",
        description='"replace" turns typographic quotes and dashes into ASCII before sending, '
        "so they do not force UCS-2",
    )

    @field_validator("allowed_countries")
    @classmethod
    def _countries(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        import phonenumbers

        known = phonenumbers.SUPPORTED_REGIONS
        out = []
        for value in values:
            code = value.strip().upper()
            if code not in known:
                raise ValueError(f"unknown country code {value!r} (ISO 3166 alpha-2, e.g. 'US')")
            out.append(code)
        return out


class MetricsConfig(_Section):
    listen: str | None = Field(
        default=None,
        description="HOST:PORT on which every process (workers and console too) serves "
        "Prometheus metrics at /metrics; the gateway also serves its own on its listener",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else GatewayConfig._listen(value)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The lowest level logged"
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description=(
            "`json`: one JSON object per line; `console`: readable lines; `auto`: `console` on a "
            "terminal, else `json`"
        ),
    )


class ProviderConfig(_Section):
    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The account's name, which `numbers.provider` refers to",
    )
    type: Literal["flowroute"] = Field(
        default="flowroute", description="The provider's kind (only Flowroute so far)"
    )
    api_url: str = Field(
        default="https://api.flowroute.com/v2.2",
        description="Flowroute's messaging API, with its version",
    )
    access_key: SecretStr = Field(
        min_length=1, description="The account's API access key (HTTP Basic user name)"
    )
    secret_key: SecretStr = Field(
        min_length=1, description="The account's API secret key (HTTP Basic password)"
    )
    sms_per_second: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Send attempts per second for SMS, retries included (Flowroute's default limit is 5)"
        ),
    )
    mms_per_second: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Send attempts per second for MMS, retries included (Flowroute's default limit is 1)"
        ),
    )

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return GatewayConfig._public_url(value) or value


class NumberConfig(_Section):
    name: str = Field(
        default="", description="A name for people (shown as `number_name` in InboundMessages)"
    )
    number: str = Field(description="The number")
    provider: str = Field(description="The `[[providers]]` account it belongs to")
    url_prefix: str = Field(
        description=(
            "The webhook path at which Flowroute delivers this number's messages: `POST "
            "/<url_prefix>` (several numbers may share one)"
        )
    )
    source: list[str] = Field(
        default_factory=list, description="Extensions allowed to send from this number"
    )
    destination: str | None = Field(
        default=None,
        description=(
            "Where its inbound messages go: the routing key `inbound.<destination>`. Unset: "
            "`inbound.unrouted`"
        ),
    )
    policy: str = Field(default="", description='The `[[policies]]` entry it follows; `""`: none')

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not value.startswith("+"):
            raise ValueError(f"not E.164 (store numbers with '+'): {value!r}")
        try:
            return to_e164(value)
        except NumberError as exc:
            raise ValueError(f"not E.164: {exc}") from None

    @field_validator("url_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if not _PREFIX.match(value):
            raise ValueError(f"not a URL path: {value!r}")
        return value

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise ValueError(f"must be letters, digits, '_' or '-' (a routing key word): {value!r}")
        return value


class Config(_Section):
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    inbound: InboundConfig = Field(default_factory=InboundConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    ledger: LedgerConfig | None = None
    console: ConsoleConfig | None = None
    providers: list[ProviderConfig] = Field(default_factory=list)
    policies: list[PolicyConfig] = Field(default_factory=list)
    numbers: list[NumberConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems: list[str] = []
        names = [p.name for p in self.providers]
        for name in {n for n in names if names.count(n) > 1}:
            problems.append(f"providers: duplicate name {name!r}")
        keys = [p.access_key.get_secret_value() for p in self.providers]
        if len(set(keys)) != len(keys):
            problems.append(
                "providers: two providers share one access key (Flowroute limits per key: "
                "declare the account once)"
            )
        seen: dict[str, int] = {}
        dlr_root = self.gateway.dlr_path.split("/")[0]
        if dlr_root in RESERVED_PATHS:
            problems.append(f"gateway.dlr_path: {dlr_root!r} collides with the gateway's own paths")
        gateway_paths = RESERVED_PATHS | {dlr_root}
        policy_names = [p.name for p in self.policies]
        for name in {n for n in policy_names if policy_names.count(n) > 1}:
            problems.append(f"policies: duplicate name {name!r}")
        for i, policy in enumerate(self.policies):
            if policy.opt_out and self.ledger is None:
                problems.append(
                    f"policies[{i}].opt_out: policy {policy.name!r} honours opt-out keywords, "
                    "and opt-outs are kept in the ledger; add a [ledger] section or set "
                    "opt_out = false"
                )
        if self.console is not None and _same_listener(self.console.listen, self.gateway.listen):
            problems.append("console.listen: must differ from gateway.listen (the public listener)")
        for i, number in enumerate(self.numbers):
            where = f"numbers[{i}]"
            if number.policy and number.policy not in policy_names:
                problems.append(
                    f"{where}.policy: unknown policy {number.policy!r} for {number.number}"
                    + (f" (known: {', '.join(policy_names)})" if policy_names else "")
                )
            if number.provider not in names:
                problems.append(f"{where}.provider: unknown provider {number.provider!r}")
            if number.number in seen:
                problems.append(
                    f"{where}.number: duplicate number {number.number} "
                    f"(also numbers[{seen[number.number]}])"
                )
            seen.setdefault(number.number, i)
            if number.url_prefix.split("/")[0] in gateway_paths:
                problems.append(
                    f"{where}.url_prefix: {number.url_prefix!r} collides with the gateway's "
                    f"own paths ({', '.join(sorted(gateway_paths))})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # Lookups used on hot paths, computed once.
    def number(self, e164: str) -> NumberConfig | None:
        return self._by_number.get(e164)

    def provider(self, name: str) -> ProviderConfig | None:
        return self._by_provider.get(name)

    def prefixes(self) -> dict[str, list[NumberConfig]]:
        return self._by_prefix

    def policy_of(self, number: NumberConfig | None) -> PolicyConfig | None:
        if number is None or not number.policy:
            return None
        return self._by_policy.get(number.policy)

    def model_post_init(self, context: Any, /) -> None:
        by_prefix: dict[str, list[NumberConfig]] = {}
        for number in self.numbers:
            by_prefix.setdefault(number.url_prefix, []).append(number)
        object.__setattr__(self, "_by_number", {n.number: n for n in self.numbers})
        object.__setattr__(self, "_by_provider", {p.name: p for p in self.providers})
        object.__setattr__(self, "_by_prefix", by_prefix)
        object.__setattr__(self, "_by_policy", {p.name: p for p in self.policies})

    _by_policy: dict[str, PolicyConfig]
    _by_number: dict[str, NumberConfig]
    _by_provider: dict[str, ProviderConfig]
    _by_prefix: dict[str, list[NumberConfig]]


def _same_listener(one: str, other: str) -> bool:
    """Would these HOST:PORT listeners clash (same port, and a host in common)?"""
    host_one, _, port_one = one.rpartition(":")
    host_other, _, port_other = other.rpartition(":")
    anywhere = {"0.0.0.0", "::", "[::]", ""}
    return port_one == port_other and (
        host_one == host_other or host_one in anywhere or host_other in anywhere
    )


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostport}"))


def _resolve_env(node: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {
            k: _resolve_env(v, f"{path}.{k}" if path else k, env, problems) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                problems.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]

        return _ENV_REF.sub(sub, node)
    return node


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def parse_config(text: str, env: dict[str, str] | None = None, source: str = "config") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    problems: list[str] = []
    resolved = _resolve_env(raw, "", dict(os.environ) if env is None else env, problems)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    try:
        return Config.model_validate(resolved)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = _format_loc(tuple(err["loc"]))
            lines.append(msg if loc == "config" else f"{loc}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load `path`, else $SMSBRIDGE_CONFIG, else the embedded demo configuration."""
    chosen = path or os.environ.get("SMSBRIDGE_CONFIG")
    if not chosen:
        from smsbridge.demo import DEMO_CONFIG

        return parse_config(DEMO_CONFIG, env={}, source="demo configuration")
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return parse_config(text, source=str(file))


def masked(config: Config) -> dict[str, Any]:
    """The resolved configuration as plain data, every secret masked."""
    data = config.model_dump(mode="json", by_alias=True)
    if config.broker.urls is not None:
        data["broker"]["urls"] = [mask_url(u) for u in config.broker.addresses()]
    else:
        data["broker"]["url"] = config.broker.masked_url()
    if config.ledger is not None:
        data["ledger"]["url"] = config.ledger.masked_url()
    if config.console is not None:
        data["console"]["token"] = MASK
    if config.gateway.dlr_secret is not None:
        data["gateway"]["dlr_secret"] = MASK
    for provider in data["providers"]:
        provider["access_key"] = MASK
        provider["secret_key"] = MASK
    return data
