"""The deployment files: compose, the Prometheus alert rules, the Grafana dashboard.

There is no Docker engine, Prometheus or Grafana where smsbridge is developed, so these are
static checks:
- every `smsbridge_*` metric that an alert rule or a dashboard panel uses is one the bridge
  exports (as Prometheus sees it: counters as `<name>_total`, histograms as
  `<name>_bucket/_sum/_count`), and so is every metric the README tells operators about;
- the alert rules and the dashboard have what Prometheus and Grafana need;
- compose.yaml and compose.cluster.yaml validate against the Compose Specification's JSON
  schema (vendored: tests/fixtures/compose-spec/README.md says from where), and hang
  together: services, volumes, mounted files, `${VARIABLES}` and the configuration they mount.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import prometheus_client
import pytest
import yaml  # type: ignore[import-untyped]

from smsbridge.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "smsbridge.json"
COMPOSE_FILES = [ROOT / "compose.yaml", ROOT / "compose.cluster.yaml"]
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec" / "compose_spec.json"
README = ROOT / "README.md"
CONFIG_IN_CONTAINER = "/etc/smsbridge/smsbridge.toml"

# -- the metrics the bridge exports -----------------------------------------------------------

# Where metrics are defined: the packages that make up the bridge.
METRIC_SOURCES = ("smsbridge", "gateway", "workers", "console")
_DEFINITION = re.compile(
    r"\b(?:Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*[\"'](smsbridge_\w+)[\"']"
)
# What prometheus_client adds to a metric family's name in the exposition, by type.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def _metric_modules() -> dict[str, set[str]]:
    """Module name -> the `smsbridge_*` metrics its source defines (found by reading it)."""
    found: dict[str, set[str]] = {}
    for package in METRIC_SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            names = set(_DEFINITION.findall(path.read_text(encoding="utf-8")))
            if names:
                parts = path.relative_to(ROOT).with_suffix("").parts
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                found[module] = names
    return found


def exported_metric_names() -> set[str]:
    """Every `smsbridge_*` sample name the bridge's processes can expose at /metrics."""
    for module in _metric_modules():
        importlib.import_module(module)
    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        if family.name.startswith("smsbridge_"):
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![\w:])smsbridge_[A-Za-z0-9_]*")


def metric_names_in(promql: str) -> set[str]:
    """The `smsbridge_*` identifiers in a PromQL expression (a loose parse: string literals,
    i.e. label values and regexes, are left out)."""
    return set(_METRIC.findall(_STRING.sub('""', promql)))


def alert_expressions(path: Path = ALERTS) -> dict[str, str]:
    """Where (alert name) -> PromQL, for every rule of a rule file."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    found = {}
    for group in document["groups"]:
        for i, rule in enumerate(group["rules"]):
            name = rule.get("alert") or rule.get("record") or f"{group['name']}[{i}]"
            found[f"{path.name}: {name}"] = str(rule["expr"])
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels


def dashboard_expressions(path: Path = DASHBOARD) -> dict[str, str]:
    """Where (panel title, target) -> PromQL, for every target and query variable."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    found = {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found[f"{path.name}: {panel.get('title')} [{target.get('refId')}]"] = target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            found[f"{path.name}: variable ${variable['name']}"] = text
    return found


def unknown_metrics(expressions: dict[str, str], exported: set[str]) -> dict[str, set[str]]:
    """Where -> the `smsbridge_*` names used there that the bridge does not export."""
    unknown = {}
    for where, expr in expressions.items():
        missing = metric_names_in(expr) - exported
        if missing:
            unknown[where] = missing
    return unknown


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metric_names()


def test_metric_definitions_are_all_registered(exported: set[str]) -> None:
    defined = set().union(*_metric_modules().values())
    assert {"smsbridge_account_held", "smsbridge_sends"} <= defined  # the scan finds them
    families = {name.removesuffix("_total") for name in exported} | {
        re.sub(r"_(bucket|sum|count|created)$", "", name) for name in exported
    }
    assert defined <= families, f"defined but not registered: {defined - families}"
    # prometheus_client's own renames, as Prometheus sees them
    assert "smsbridge_sends_total" in exported
    assert "smsbridge_send_seconds_bucket" in exported
    assert "smsbridge_sends" not in exported


def test_promql_metric_names_are_found_loosely() -> None:
    expr = (
        'sum by (q) (rate(smsbridge_a_total{queue=~"smsbridge_not_a_metric.+"}[5m]))'
        " / on() group_left smsbridge_b or vector(0)"
    )
    assert metric_names_in(expr) == {"smsbridge_a_total", "smsbridge_b"}


def test_alert_rules_use_only_exported_metrics(exported: set[str]) -> None:
    expressions = alert_expressions()
    used = set().union(*(metric_names_in(e) for e in expressions.values()))
    assert "smsbridge_account_held" in used  # the rules were read
    assert unknown_metrics(expressions, exported) == {}


def test_dashboard_uses_only_exported_metrics(exported: set[str]) -> None:
    expressions = dashboard_expressions()
    used = set().union(*(metric_names_in(e) for e in expressions.values()))
    assert "smsbridge_account_held" in used  # the panels were read
    assert unknown_metrics(expressions, exported) == {}


def test_an_unknown_metric_in_the_rules_is_caught(exported: set[str], tmp_path: Path) -> None:
    """The check above fails on a rule file that names a metric nobody exports."""
    copy = tmp_path / "alerts.yml"
    shutil.copy(ALERTS, copy)
    document = yaml.safe_load(copy.read_text(encoding="utf-8"))
    document["groups"][0]["rules"].append(
        {"alert": "Bogus", "expr": "rate(smsbridge_nonexistent_total[5m]) > 0"}
    )
    copy.write_text(yaml.safe_dump(document), encoding="utf-8")
    unknown = unknown_metrics(alert_expressions(copy), exported)
    assert unknown["alerts.yml: Bogus"] == {"smsbridge_nonexistent_total"}


def test_metrics_the_readme_names_are_exported(exported: set[str]) -> None:
    # What operators are told to watch, e.g. `smsbridge_account_held{account}`.
    named = set(_METRIC.findall(README.read_text(encoding="utf-8")))
    assert "smsbridge_account_held" in named
    assert named <= exported, f"the README names unexported metrics: {named - exported}"


# -- the alert rules and the dashboard --------------------------------------------------------

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_alert_rules_have_what_prometheus_and_operators_need() -> None:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    names = []
    assert document["groups"], "no rule groups"
    for group in document["groups"]:
        assert group["name"] and group["rules"], group
        for rule in group["rules"]:
            assert {"alert", "expr", "for", "labels", "annotations"} <= rule.keys(), rule
            names.append(rule["alert"])
            assert str(rule["expr"]).strip(), rule["alert"]
            assert _DURATION.match(str(rule["for"])), (rule["alert"], rule["for"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"].strip(), rule["alert"]
            # says what to do, not only what happened
            assert len(rule["annotations"]["description"].split()) >= 15, rule["alert"]
    assert len(names) == len(set(names)), "alert names repeat"
    # What the operations side relies on.
    assert {
        "SmsbridgeAccountHeld",
        "SmsbridgeWebhooks503",
        "SmsbridgeMessagesParked",
        "SmsbridgeSustained429",
        "SmsbridgeSendLatencyHigh",
        "SmsbridgeDeliveriesHeld",
        "SmsbridgeMediaFetchFailures",
        "SmsbridgeNoWebhooks",
    } <= set(names)


def test_prometheus_config_loads_the_rules_and_scrapes_the_gateway() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    assert [Path(f).name for f in config["rule_files"]] == [ALERTS.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # SmsbridgeGatewayDown selects this job by name.
    assert "smsbridge-gateway" in jobs
    assert 'job="smsbridge-gateway"' in ALERTS.read_text(encoding="utf-8")


def test_dashboard_is_importable_and_every_panel_has_a_title_and_a_query() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["id"] is None  # an import creates its own
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    queries = [p for p in panels if p["type"] != "row"]
    assert len(queries) >= 10
    for panel in panels:
        assert panel.get("title", "").strip(), panel
    for panel in queries:
        assert panel.get("targets"), f"panel {panel['title']!r} has no target"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# -- compose ----------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])[^}]*)?\}")
_COMPOSE_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
_PORTS = re.compile(
    r"^((\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:]+\]):)?"  # host IP
    r"((\d+(-\d+)?)?:)?"  # host port (range)
    r"\d+(-\d+)?(/(tcp|udp|sctp))?$"  # container port (range), protocol
)


def _compose_format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    def _duration(value: object) -> bool:
        return not isinstance(value, str) or bool(_COMPOSE_DURATION.match(value))

    def _ports(value: object) -> bool:
        return not isinstance(value, str) or bool(_PORTS.match(value))

    checker.checks("duration")(_duration)
    checker.checks("ports")(_ports)

    return checker


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _env_example() -> dict[str, str]:
    """The variables .env.example sets (not the commented-out optional ones)."""
    found = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


def _variables(compose: dict[str, Any]) -> dict[str, bool]:
    """Every ${VAR} the file uses -> whether every use of it has a default."""
    found: dict[str, bool] = {}
    for text in _strings(compose):
        for name, operator in _VARIABLE.findall(text):
            defaulted = operator in (":-", "-")
            found[name] = found.get(name, True) and defaulted
    return found


def _volume_sources(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(type, source, target) of each of a service's volumes."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            yield volume.get("type", "volume"), volume.get("source", ""), volume["target"]
            continue
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0] if rest else source
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield kind, source if rest else "", target


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def test_the_vendored_schema_refuses_what_compose_refuses(compose_schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(compose_schema, format_checker=_compose_format_checker())
    bad = {
        "services": {
            "a": {
                "image": "x",
                "restart": "unless-stopped",
                "depends_on": {"b": {"condition": "when_ready"}},
                "ports": ["localhost:80:80"],
                "stop_grace_period": "forty seconds",
                "comand": ["x"],
            }
        }
    }
    messages = " | ".join(e.message for e in validator.iter_errors(bad))
    assert "'comand' does not match any of the regexes" in messages
    assert "'localhost:80:80' is not valid" in messages  # a host name: not a 'ports'
    assert "is not a 'duration'" in messages
    assert "is not valid under any of the given schemas" in messages  # depends_on


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(
    path: Path, compose_schema: dict[str, Any]
) -> None:
    validator = jsonschema.Draft7Validator(compose_schema, format_checker=_compose_format_checker())
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(_load(path))
    ]
    assert errors == []


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_services_volumes_and_files_exist(path: Path) -> None:
    compose = _load(path)
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for kind, source, target in _volume_sources(service):
            if kind == "volume" and source:
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
            elif kind == "bind":
                assert (path.parent / source).exists(), f"{name}: {source} does not exist"
            assert target.startswith("/"), (name, target)
    assert declared <= used, f"declared but unused volumes: {declared - used}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_variables_are_defaulted_or_in_env_example(path: Path) -> None:
    example = _env_example()
    variables = _variables(_load(path))
    assert variables, "no ${VARIABLE} found: the scan is broken"
    missing = {name for name, defaulted in variables.items() if not defaulted} - example.keys()
    assert not missing, f"add to .env.example (or give a default): {sorted(missing)}"


def test_env_example_lists_only_variables_compose_uses() -> None:
    used = set().union(*(_variables(_load(p)).keys() for p in COMPOSE_FILES))
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    listed = set(_env_example()) | set(re.findall(r"^# ([A-Z_][A-Z0-9_]*)=", text, re.M))
    assert listed <= used, f"not used by any compose file: {listed - used}"
    assert used <= listed, f"not explained in .env.example: {used - listed}"
    lines = text.splitlines()
    for i, line in enumerate(lines):  # each variable comes with a comment
        if re.match(r"^#? ?[A-Z_][A-Z0-9_]*=", line):
            above = lines[i - 1]
            assert above.startswith("#"), f"no comment before {line!r}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_profiled_services_require_no_variable(path: Path) -> None:
    # Compose interpolates every service before it applies profiles: a `${VAR:?}` in an
    # optional service would stop `docker compose up` for everyone.
    for name, service in _load(path)["services"].items():
        if service.get("profiles"):
            required = {n for n, defaulted in _variables(service).items() if not defaulted}
            assert not required, f"{name} (profiles {service['profiles']}) requires {required}"


def _smsbridge_services(
    compose: dict[str, Any], base: Path
) -> dict[str, tuple[dict[str, Any], Path]]:
    """The services that run smsbridge: those that mount its configuration."""
    found = {}
    for name, service in compose["services"].items():
        for kind, source, target in _volume_sources(service):
            if kind == "bind" and target == CONFIG_IN_CONTAINER:
                found[name] = (service, base / source)
    return found


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_each_smsbridge_service_gets_every_variable_its_configuration_names(path: Path) -> None:
    services = _smsbridge_services(_load(path), path.parent)
    assert {"gateway", "resolver", "media", "outbound", "console"} <= services.keys()
    for name, (service, config) in services.items():
        text = config.read_text(encoding="utf-8")
        needed = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        missing = needed - set(environment)
        assert not missing, f"{name}: {config.name} needs {sorted(missing)}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_mounted_configuration_is_valid_and_the_console_stays_local(path: Path) -> None:
    compose = _load(path)
    services = _smsbridge_services(compose, path.parent)
    _, config_path = services["console"]
    text = config_path.read_text(encoding="utf-8")
    env = {
        name: "https://sms.example.com" if name.endswith("_URL") else "x" * 32
        for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
    }
    config = parse_config(text, env, config_path.name)
    assert config.ledger is not None and config.console is not None
    assert config.ledger.url.get_secret_value().startswith("postgresql://")
    assert "@db:" in config.ledger.url.get_secret_value()  # the compose service
    assert "db" in compose["services"]
    console = compose["services"]["console"]
    assert console["command"] == ["console"]
    assert config.console.host == "0.0.0.0"  # reachable from the host's port mapping...
    ports = console.get("ports", [])
    assert ports, "the console publishes no port"
    for port in ports:  # ...which is on the host's loopback only
        assert str(port).startswith("127.0.0.1:"), f"console published beyond loopback: {port}"
        assert str(port).rsplit(":", 1)[1] == str(config.console.port)
    assert "SMSBRIDGE_CONSOLE_TOKEN" in (console.get("environment") or {})
