"""Configuration (docs/configuration.md): parsing, `${VAR}` resolution, validation, masking, CLI
check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smsbridge.config import (
    MASK,
    Config,
    ConfigError,
    load_config,
    mask_url,
    masked,
    parse_config,
)

ACCESS_KEY = "AK-7f3e9c1d2b4a"
SECRET_KEY = "SK-very-secret-5e6f7a8b9c0d"
DLR_SECRET = "dlr-signing-secret-1a2b3c4d"
BROKER_PASSWORD = "br0ker-pa55w0rd"
SECRETS = (ACCESS_KEY, SECRET_KEY, DLR_SECRET, BROKER_PASSWORD)

ENV = {
    "FLOWROUTE_ACCESS_KEY": ACCESS_KEY,
    "FLOWROUTE_SECRET_KEY": SECRET_KEY,
    "DLR_SECRET": DLR_SECRET,
    "BROKER_PASSWORD": BROKER_PASSWORD,
}

BROKER = '[broker]\nurl = "amqp://bridge:${BROKER_PASSWORD}@rabbit.internal:5672/pbx"\n'
GATEWAY = """
[gateway]
listen = "127.0.0.1:8080"
public_url = "https://pbx.example.com"
allow_ips = []
dlr_secret = "${DLR_SECRET}"
"""
MEDIA = '\n[media]\ndir = "var/media"\n'
PROVIDER = """
[[providers]]
name = "flowroute"
type = "flowroute"
api_url = "https://api.flowroute.com/v2.2"
access_key = "${FLOWROUTE_ACCESS_KEY}"
secret_key = "${FLOWROUTE_SECRET_KEY}"
sms_per_second = 5
mms_per_second = 1
"""
NUMBER = """
[[numbers]]
name = "Main line"
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["100", "101"]
destination = "100"
policy = ""
"""
FULL = BROKER + GATEWAY + MEDIA + PROVIDER + NUMBER


def number_block(number: str = "+12025551234", **fields: str) -> str:
    values = {
        "number": number,
        "provider": "flowroute",
        "url_prefix": "flowrouteinbound",
        **fields,
    }
    lines = "".join(f'{key} = "{value}"\n' for key, value in values.items())
    return f"\n[[numbers]]\n{lines}"


def config_error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=ENV if env is None else env)
    return str(info.value)


# --- a valid configuration ----------------------------------------------------------------


def test_full_contract_example_parses() -> None:
    config = parse_config(FULL, env=ENV)

    assert isinstance(config, Config)
    assert config.gateway.host == "127.0.0.1"
    assert config.gateway.port == 8080
    assert config.gateway.public_url == "https://pbx.example.com"
    assert config.gateway.allow_ips == []
    assert config.media.dir == Path("var/media")
    (provider,) = config.providers
    assert provider.name == "flowroute"
    assert provider.type == "flowroute"
    assert provider.sms_per_second == 5
    assert provider.mms_per_second == 1
    (number,) = config.numbers
    assert number.name == "Main line"
    assert number.number == "+12025551234"
    assert number.source == ["100", "101"]
    assert number.destination == "100"
    assert config.number("+12025551234") is number
    assert config.provider("flowroute") is provider
    assert config.prefixes() == {"flowrouteinbound": [number]}


def test_env_references_are_resolved_from_the_given_mapping() -> None:
    config = parse_config(FULL, env=ENV)

    assert config.providers[0].access_key.get_secret_value() == ACCESS_KEY
    assert config.providers[0].secret_key.get_secret_value() == SECRET_KEY
    assert config.gateway.dlr_secret is not None
    assert config.gateway.dlr_secret.get_secret_value() == DLR_SECRET
    assert config.broker.addresses() == [
        f"amqp://bridge:{BROKER_PASSWORD}@rabbit.internal:5672/pbx"
    ]


def test_env_mapping_is_used_instead_of_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWROUTE_ACCESS_KEY", "from-process-env")
    config = parse_config(FULL, env=ENV)
    assert config.providers[0].access_key.get_secret_value() == ACCESS_KEY


def test_secrets_are_not_shown_by_repr() -> None:
    config = parse_config(FULL, env=ENV)
    text = repr(config) + str(config)
    for secret in (ACCESS_KEY, SECRET_KEY, DLR_SECRET):
        assert secret not in text


# --- errors name the field ------------------------------------------------------------------


def test_missing_env_var_names_the_field_and_the_variable() -> None:
    env = {k: v for k, v in ENV.items() if k != "FLOWROUTE_SECRET_KEY"}
    message = config_error(FULL, env)
    assert "providers[0].secret_key" in message
    assert "FLOWROUTE_SECRET_KEY" in message


def test_every_missing_env_var_is_reported_at_once() -> None:
    message = config_error(FULL, {})
    for field, var in [
        ("broker.url", "BROKER_PASSWORD"),
        ("gateway.dlr_secret", "DLR_SECRET"),
        ("providers[0].access_key", "FLOWROUTE_ACCESS_KEY"),
        ("providers[0].secret_key", "FLOWROUTE_SECRET_KEY"),
    ]:
        assert field in message
        assert var in message


def test_invalid_toml_is_a_config_error() -> None:
    assert "not valid TOML" in config_error("[broker\nurl = 1")


@pytest.mark.parametrize("bad", ["12025551234", "+555", "+1202", "call me", "+1234567890123456"])
def test_number_not_e164_names_the_number_field(bad: str) -> None:
    message = config_error(PROVIDER + number_block(bad))
    assert "numbers[0].number" in message


def test_number_error_points_at_the_right_index() -> None:
    message = config_error(PROVIDER + number_block() + number_block("555", url_prefix="b"))
    assert "numbers[1].number" in message
    assert "numbers[0]" not in message


def test_number_is_normalized_to_e164() -> None:
    config = parse_config(PROVIDER + number_block("+1 (202) 555-1234"), env=ENV)
    assert config.numbers[0].number == "+12025551234"


def test_unknown_provider_names_the_number_provider_field() -> None:
    message = config_error(PROVIDER + number_block(provider="twilio-account"))
    assert "numbers[0].provider" in message
    assert "twilio-account" in message


def test_number_without_any_provider_configured_is_rejected() -> None:
    message = config_error(number_block())
    assert "numbers[0].provider" in message


def test_unknown_provider_type_is_rejected() -> None:
    message = config_error(PROVIDER.replace('type = "flowroute"', 'type = "twilio"'))
    assert "providers[0].type" in message


def test_duplicate_provider_names_are_rejected() -> None:
    message = config_error(PROVIDER + PROVIDER)
    assert "duplicate" in message
    assert "flowroute" in message


def test_duplicate_number_is_rejected() -> None:
    text = PROVIDER + number_block("+12025551234") + number_block("+12025551234")
    message = config_error(text)
    assert "numbers[1].number" in message
    assert "duplicate" in message


def test_duplicate_number_is_detected_after_normalization() -> None:
    text = PROVIDER + number_block("+1 202 555 1234") + number_block("+12025551234")
    message = config_error(text)
    assert "numbers[1].number" in message
    assert "numbers[0]" in message  # "also numbers[0]"


def test_numbers_may_share_a_url_prefix() -> None:
    text = PROVIDER + number_block("+12025551234") + number_block("+12025551235")
    config = parse_config(text, env=ENV)
    assert [n.number for n in config.prefixes()["flowrouteinbound"]] == [
        "+12025551234",
        "+12025551235",
    ]


@pytest.mark.parametrize("prefix", ["healthz", "readyz", "metrics", "media", "media/inbound"])
def test_url_prefix_colliding_with_gateway_paths_is_rejected(prefix: str) -> None:
    message = config_error(PROVIDER + number_block(url_prefix=prefix))
    assert "numbers[0].url_prefix" in message
    assert "collides" in message


@pytest.mark.parametrize("prefix", ["flowroute", "flowroute/inbound", "/flowroute/"])
def test_url_prefix_colliding_with_the_dlr_path_is_rejected(prefix: str) -> None:
    # default dlr_path is "flowroute/dlr": its first segment is "flowroute"
    message = config_error(PROVIDER + number_block(url_prefix=prefix))
    assert "numbers[0].url_prefix" in message


def test_url_prefix_collision_follows_a_custom_dlr_path() -> None:
    gateway = '[gateway]\ndlr_path = "/receipts/dlr/"\n'
    message = config_error(gateway + PROVIDER + number_block(url_prefix="receipts"))
    assert "numbers[0].url_prefix" in message
    config = parse_config(gateway + PROVIDER + number_block(url_prefix="flowroute"), env=ENV)
    assert config.gateway.dlr_path == "receipts/dlr"


@pytest.mark.parametrize("prefix", ["has space", "a//b", "query?x=1", ""])
def test_url_prefix_that_is_not_a_path_is_rejected(prefix: str) -> None:
    message = config_error(PROVIDER + number_block(url_prefix=prefix))
    assert "numbers[0].url_prefix" in message


@pytest.mark.parametrize(
    "listen", ["8080", "127.0.0.1", ":8080", "127.0.0.1:http", "127.0.0.1:70000", ""]
)
def test_bad_listen_names_gateway_listen(listen: str) -> None:
    message = config_error(f'[gateway]\nlisten = "{listen}"\n')
    assert "gateway.listen" in message


def test_ipv6_listen_is_accepted() -> None:
    config = parse_config('[gateway]\nlisten = "[::1]:8443"\n', env={})
    assert config.gateway.host == "::1"
    assert config.gateway.port == 8443


@pytest.mark.parametrize("entry", ["52.88.246.999", "flowroute.com", "10.0.0.0/33", ""])
def test_bad_allow_ips_entry_names_the_field(entry: str) -> None:
    message = config_error(f'[gateway]\nallow_ips = ["52.88.246.140", "{entry}"]\n')
    assert "gateway.allow_ips" in message


def test_allow_ips_accepts_addresses_and_networks() -> None:
    text = '[gateway]\nallow_ips = ["52.88.246.140", "52.10.220.0/24", "2001:db8::/32"]\n'
    assert len(parse_config(text, env={}).gateway.allow_ips) == 3


def test_bad_trusted_proxies_entry_names_the_field() -> None:
    message = config_error('[gateway]\ntrusted_proxies = ["proxy.local"]\n')
    assert "gateway.trusted_proxies" in message


def test_unknown_key_is_rejected_with_its_path() -> None:
    message = config_error(PROVIDER.replace("access_key", "acess_key"))
    assert "providers[0].acess_key" in message


def test_bad_public_url_names_the_field() -> None:
    message = config_error('[gateway]\npublic_url = "pbx.example.com"\n')
    assert "gateway.public_url" in message


def test_error_message_starts_with_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/smsbridge.toml: "):
        parse_config('[gateway]\nlisten = "x"\n', env={}, source="/etc/smsbridge.toml")


# --- masking --------------------------------------------------------------------------------


def test_masked_output_contains_no_secret_anywhere() -> None:
    data = masked(parse_config(FULL, env=ENV))
    text = json.dumps(data)

    for secret in SECRETS:
        assert secret not in text
    assert data["providers"][0]["access_key"] == MASK
    assert data["providers"][0]["secret_key"] == MASK
    assert data["gateway"]["dlr_secret"] == MASK
    assert data["broker"]["url"] == f"amqp://bridge:{MASK}@rabbit.internal:5672/pbx"
    # everything else is shown as resolved
    assert data["numbers"][0]["number"] == "+12025551234"
    assert data["gateway"]["listen"] == "127.0.0.1:8080"


def test_masked_output_without_dlr_secret_keeps_null() -> None:
    data = masked(parse_config(PROVIDER, env=ENV))
    assert data["gateway"]["dlr_secret"] is None
    assert ACCESS_KEY not in json.dumps(data)


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("amqp://guest:guest@127.0.0.1:5672/") == f"amqp://guest:{MASK}@127.0.0.1:5672/"
    assert mask_url("amqps://u:p%40ss@mq.example.com/vh?heartbeat=30") == (
        f"amqps://u:{MASK}@mq.example.com/vh?heartbeat=30"
    )
    assert mask_url("amqp://127.0.0.1/") == "amqp://127.0.0.1/"


def test_mask_url_keeps_an_ipv6_host_usable() -> None:
    assert mask_url("amqp://guest:s3cret@[::1]:5672/") == f"amqp://guest:{MASK}@[::1]:5672/"


# --- load_config ----------------------------------------------------------------------------


def test_demo_config_loads_when_no_path_and_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMSBRIDGE_CONFIG", raising=False)
    config = load_config(None)
    assert config.providers
    assert config.numbers
    assert config.provider(config.numbers[0].provider) is not None


def test_load_config_reads_smsbridge_config_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "smsbridge.toml"
    path.write_text(FULL, encoding="utf-8")
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SMSBRIDGE_CONFIG", str(path))
    config = load_config(None)
    assert config.providers[0].secret_key.get_secret_value() == SECRET_KEY


def test_load_config_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


# --- smsbridge config check -----------------------------------------------------------------


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SMSBRIDGE_CONFIG"}
    env.update(ENV)
    return subprocess.run(
        [sys.executable, "-m", "smsbridge.cli", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_config_check_prints_masked_json_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(FULL, encoding="utf-8")

    result = run_check(path)

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["numbers"][0]["number"] == "+12025551234"
    assert data["providers"][0]["secret_key"] == MASK
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_config_check_bad_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    # a bad number, and a misspelled key next to the secrets: nothing secret may be echoed
    text = FULL.replace('number = "+12025551234"', 'number = "555"').replace(
        "sms_per_second", "sms_per_sec"
    )
    path.write_text(text, encoding="utf-8")

    result = run_check(path)

    assert result.returncode == 2
    assert "numbers[0].number" in result.stderr
    assert "providers[0].sms_per_sec" in result.stderr
    assert result.stdout == ""
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr


# --- operator mistakes found in review ----------------------------------------------------


def test_short_dlr_secret_is_rejected() -> None:
    message = config_error('[gateway]\ndlr_secret = ""\n' + PROVIDER)
    assert "gateway.dlr_secret" in message


@pytest.mark.parametrize("delays", ["[]", "[5, -1]", "[0]"])
def test_bad_retry_delays_are_rejected(delays: str) -> None:
    message = config_error(f"[outbound]\nretry_delays = {delays}\n" + PROVIDER)
    assert "outbound.retry_delays" in message


def test_two_providers_with_one_access_key_are_rejected() -> None:
    second = PROVIDER.replace('name = "flowroute"', 'name = "again"')
    message = config_error(PROVIDER + second)
    assert "share one access key" in message


def test_media_ports_default_to_http_and_https() -> None:
    config = parse_config(PROVIDER, env=ENV)
    assert config.media.allowed_ports == [80, 443]
    assert config.media.allow_any_port is False


def test_gateway_base_url_without_public_url_is_reachable() -> None:
    config = parse_config('[gateway]\nlisten = "0.0.0.0:8081"\n' + PROVIDER, env=ENV)
    assert config.gateway.base_url == "http://127.0.0.1:8081"


# -- v1.1: cluster, ledger, console, policies -------------------------------------------------

LEDGER = '\n[ledger]\nurl = "postgresql://smsbridge:${DB_PASSWORD}@db:5432/smsbridge"\n'
ENV_11 = {**ENV, "DB_PASSWORD": "db-pa55-word-xyz", "CONSOLE_TOKEN": "console-token-0123456789abc"}


def test_broker_urls_list_every_node_masked() -> None:
    text = (
        '[broker]\nurls = ["amqp://u:${BROKER_PASSWORD}@rmq1:5672/", '
        '"amqp://u:${BROKER_PASSWORD}@rmq2:5672/"]\n' + GATEWAY + MEDIA + PROVIDER + NUMBER
    )
    config = parse_config(text, env=ENV)
    assert config.broker.addresses() == [
        f"amqp://u:{BROKER_PASSWORD}@rmq1:5672/",
        f"amqp://u:{BROKER_PASSWORD}@rmq2:5672/",
    ]
    shown = json.dumps(masked(config))
    assert BROKER_PASSWORD not in shown and "rmq2" in shown


def test_broker_url_and_urls_together_are_refused() -> None:
    text = '[broker]\nurl = "amqp://a/"\nurls = ["amqp://b/"]\n'
    assert "set `url` or `urls`, not both" in config_error(text)


def test_ledger_url_must_be_postgresql_and_is_masked() -> None:
    assert "postgresql://" in config_error('[ledger]\nurl = "mysql://x@db/y"\n')
    config = parse_config(FULL + LEDGER, env=ENV_11)
    assert "db-pa55-word-xyz" not in json.dumps(masked(config))


def test_console_needs_a_long_token_and_its_own_listener() -> None:
    short = FULL + LEDGER + '\n[console]\ntoken = "short"\n'
    assert "console.token" in config_error(short, ENV_11)
    same = FULL + LEDGER + '\n[console]\nlisten = "127.0.0.1:8080"\ntoken = "${CONSOLE_TOKEN}"\n'
    assert "console.listen" in config_error(same, ENV_11)
    fine = FULL + LEDGER + '\n[console]\ntoken = "${CONSOLE_TOKEN}"\n'
    assert "console-token-0123456789abc" not in json.dumps(masked(parse_config(fine, ENV_11)))


POLICY = """
[[policies]]
name = "us-a2p"
opt_out = true
allowed_countries = ["us", "CA"]
quiet_hours = { start = "21:00", end = "08:00", timezone = "America/New_York" }
max_segments = 10
"""


def test_a_policy_is_parsed_and_referenced_by_its_numbers() -> None:
    text = FULL.replace('policy = ""', 'policy = "us-a2p"') + LEDGER + POLICY
    config = parse_config(text, env=ENV_11)
    policy = config.policy_of(config.numbers[0])
    assert policy is not None and policy.allowed_countries == ["US", "CA"]
    assert policy.quiet_hours is not None and policy.quiet_hours.timezone == "America/New_York"


def test_an_unknown_policy_is_an_error_naming_the_number() -> None:
    text = FULL.replace('policy = ""', 'policy = "nope"') + LEDGER + POLICY
    message = config_error(text, ENV_11)
    assert "numbers[0].policy" in message and "+12025551234" in message and "'nope'" in message


def test_opt_out_keywords_need_the_ledger() -> None:
    text = FULL.replace('policy = ""', 'policy = "us-a2p"') + POLICY
    assert "policies[0].opt_out" in config_error(text) and "[ledger]" in config_error(text)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ('start = "21:00"', 'start = "9pm"'),
        ('timezone = "America/New_York"', 'timezone = "Mars/Olympus"'),
        ('allowed_countries = ["us", "CA"]', 'allowed_countries = ["XX"]'),
    ],
)
def test_bad_policy_values_are_errors(change: str, field: str) -> None:
    text = FULL + LEDGER + POLICY.replace(change, field)
    assert "policies[0]" in config_error(text, ENV_11)


def test_config_check_prints_each_numbers_policy(tmp_path: Path) -> None:
    path = tmp_path / "smsbridge.toml"
    path.write_text(FULL.replace('policy = ""', 'policy = "us-a2p"') + LEDGER + POLICY)
    done = subprocess.run(
        [sys.executable, "-m", "smsbridge.cli", "--config", str(path), "config", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV_11},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "number +12025551234: policy us-a2p: STOP/START/HELP keywords" in done.stderr
    assert "quiet hours 21:00-08:00 America/New_York" in done.stderr
