"""Write the reference parts of the docs, generated from the code.

python -m smsbridge.reference          # (re)write docs/configuration.md and docs/commands.md
python -m smsbridge.reference --check  # exit 1, listing them, if any file is stale (for CI)

- `docs/configuration.md`: every section and key of the TOML configuration, from the pydantic
  models of `smsbridge.config`: type, default, whether required, constraints, description.
- `docs/commands.md`: every command of the `smsbridge` command line, from the argparse parser
  of `smsbridge.cli`: description, usage, arguments with their help, example; and the exit
  statuses.

The words come from the code (`Field(description=...)`, argparse's `help`, `description` and
`epilog`). What the code cannot say is kept here, in small tables that the tests hold to the
code (`tests/test_reference.py`): a one-line introduction per section, the rules that
validators enforce, notes on exit statuses, and descriptions for the fields that have none yet.
The output is deterministic: the same code gives the same bytes.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from smsbridge import cli, config

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION_PATH = "docs/configuration.md"
COMMANDS_PATH = "docs/commands.md"
PROG = "python -m smsbridge.reference"
BANNER = (
    "<!-- Generated from {source} by `{prog}`. Do not edit: change the code (or "
    "smsbridge/reference.py), then run it again. -->\n"
)

# -- configuration: what the models cannot say ---------------------------------------------

# Each section's one-line introduction, in the order the reference shows them. Every field of
# `config.Config` must be here (a test checks it).
SECTIONS: Mapping[str, str] = {
    "broker": "The RabbitMQ broker: one node (`url`) or the nodes of a cluster (`urls`).",
    "gateway": (
        "The HTTP receiver: Flowroute's webhooks and delivery receipts, stored MMS media, "
        "health and metrics."
    ),
    "providers": (
        "Flowroute accounts, one entry per access key. Each has its own queue and rate limits."
    ),
    "numbers": (
        "Our phone numbers: which account they belong to, where Flowroute delivers their "
        "messages, who may send from them and who receives what arrives."
    ),
    "policies": (
        "Named rule sets a number can use (`numbers.policy`): opt-out keywords, allowed "
        "countries, quiet hours, a maximum length, smart quotes. Every key but `name` is "
        "optional; an absent key turns its rule off."
    ),
    "ledger": (
        "The PostgreSQL ledger. Optional: with it, every message is handled exactly once "
        "across replicas and restarts, and its history is kept. Needed by the console and by "
        "opt-outs."
    ),
    "console": (
        "The history API and the operator console. Optional; served only when `[ledger]` is "
        "configured too."
    ),
    "media": "Inbound MMS media: where it is stored, for how long, and what may be fetched.",
    "inbound": "Inbound messages (Flowroute to the PBX).",
    "outbound": "Outbound messages (the PBX to Flowroute): retries, timeouts, pacing.",
    "logging": "Log lines on standard output.",
    "metrics": (
        "Prometheus metrics of every process (the gateway also serves its own on its listener)."
    ),
}

# Descriptions for fields that have no `Field(description=...)` in smsbridge/config.py yet.
# Only used while the model has none: move each into the model, then delete it here (a test
# fails on an entry that is no longer needed).
MISSING_DESCRIPTIONS: Mapping[str, str] = {}

_PATH_RULE = "a URL path: letters, digits, `.`, `_`, `~`, `-`, segments separated by `/`"
_RESERVED = ", ".join(f"`{p}`" for p in sorted(config.RESERVED_PATHS))

# Rules that validators enforce (pydantic cannot describe them), by field.
RULES: Mapping[str, str] = {
    "broker.url": (
        "an `amqp://` or `amqps://` URL; not together with `urls`. When neither is set: "
        f"`{config.DEFAULT_BROKER_URL}`"
    ),
    "broker.urls": "`amqp://` or `amqps://` URLs; not together with `url`",
    "gateway.listen": "`HOST:PORT`",
    "gateway.public_url": "an `http://` or `https://` URL; a trailing `/` is dropped",
    "gateway.allow_ips": "IP addresses or networks (`52.88.246.140`, `10.0.0.0/8`)",
    "gateway.trusted_proxies": "IP addresses or networks",
    "gateway.dlr_path": f"{_PATH_RULE}; its first segment is not one of {_RESERVED}",
    "media.allow_networks": "IP addresses or networks",
    "ledger.url": "a `postgresql://` or `postgres://` URL",
    "console.listen": "`HOST:PORT`, not the same as `gateway.listen`",
    "console.public_url": "an `http://` or `https://` URL",
    "policies.name": "unique among `[[policies]]`",
    "policies.opt_out": "`true` needs a `[ledger]` section (the opt-out list lives there)",
    "policies.allowed_countries": "ISO 3166 alpha-2 codes (`US`, `CA`), any case",
    "policies.quiet_hours.start": "`HH:MM`, 24-hour; not equal to `end`",
    "policies.quiet_hours.end": "`HH:MM`, 24-hour; not equal to `start`",
    "policies.quiet_hours.timezone": "a known IANA time zone",
    "providers.name": "unique among `[[providers]]`",
    "providers.access_key": "two providers may not share one",
    "providers.api_url": "an `http://` or `https://` URL",
    "numbers.number": "E.164 with its `+` (`+12025551234`); unique among `[[numbers]]`",
    "numbers.provider": "the `name` of a `[[providers]]` entry",
    "numbers.url_prefix": (
        f"{_PATH_RULE}; its first segment is not one of {_RESERVED}, nor the first segment "
        "of `gateway.dlr_path`"
    ),
    "numbers.destination": "letters, digits, `_` and `-` (it becomes a routing-key word)",
    "numbers.policy": '`""` or the `name` of a `[[policies]]` entry',
}

CONFIGURATION_INTRO = """\
# Configuration reference

smsbridge reads one TOML file: the path given with `--config PATH`, else the one named by
the environment variable `SMSBRIDGE_CONFIG`. With neither, it runs a built-in demo
configuration against the local sandbox (`smsbridge sandbox`).

- **Secrets and other values from the environment.** Any string may refer to environment
  variables as `${NAME}`, e.g. `access_key = "${FLOWROUTE_ACCESS_KEY}"`. A variable that is
  not set is an error. Secret values (marked *secret* below) are never logged, and
  `smsbridge config check` prints them masked.
- **Checked at start.** The whole file is validated before anything runs. An unknown key,
  a wrong type or a broken rule stops the program with exit status 2 and a message that
  names each bad field, e.g. `numbers[0].number: not E.164 (store numbers with '+'):
  '2025551234'`. `smsbridge config check` validates a file and prints what it resolves to;
  `smsbridge doctor` also checks the services it names.
- **Sections.** `[name]` is a table, `[[name]]` a list of tables (repeat it for each
  entry). A section that is absent takes its defaults; `[ledger]` and `[console]`, when
  absent, turn their feature off. *Required* means required when its section (or table) is
  present.

A small but complete configuration:

```toml
[broker]
url = "amqp://smsbridge:${RABBITMQ_PASSWORD}@127.0.0.1:5672/"

[gateway]
listen = "127.0.0.1:8080"
public_url = "https://pbx.example.com"
dlr_secret = "${SMSBRIDGE_DLR_SECRET}"

[[providers]]
name = "flowroute"
access_key = "${FLOWROUTE_ACCESS_KEY}"
secret_key = "${FLOWROUTE_SECRET_KEY}"

[[numbers]]
name = "Main line"
number = "+12025551234"
provider = "flowroute"
url_prefix = "flowrouteinbound"
source = ["100", "101"]
destination = "100"
```

The same deployment with a ledger, the console and a policy adds:

```toml
[ledger]
url = "postgresql://smsbridge:${SMSBRIDGE_DB_PASSWORD}@db:5432/smsbridge"

[console]
listen = "127.0.0.1:8081"
token = "${SMSBRIDGE_CONSOLE_TOKEN}"

[[policies]]
name = "us-a2p"
opt_out = true
help_reply = "Example Co. support: 202-555-0100. Reply STOP to unsubscribe."
allowed_countries = ["US", "CA"]
quiet_hours = { start = "21:00", end = "08:00", timezone = "America/New_York" }
max_segments = 10

# and, in the [[numbers]] entry above:
# policy = "us-a2p"
```
"""

# -- commands: what the parser cannot say --------------------------------------------------

# Exit statuses particular to a command, beyond the general table (`cli.__doc__`).
EXIT_NOTES: Mapping[str, str] = {
    "tail": "1 when `--timeout` ran out before `--count` events arrived.",
    "doctor": "1 when a check fails (`FAIL`); warnings (`warn`) do not count.",
    "flowroute setup": "1 when any provider could not be set up (each says why).",
    "history": (
        "1 when the message is not in the ledger or the ledger cannot be reached; 2 for a bad "
        "filter."
    ),
    "optout add": "1 when the recipient was already opted out (nothing changed).",
    "optout remove": "1 when the recipient was not opted out (nothing changed).",
    "optout list": "1 when the ledger cannot be reached.",
    "db migrate": "1 when the ledger cannot be reached.",
    "db sweep": "1 when the ledger cannot be reached, or another process is sweeping now.",
    "sandbox post": (
        "1 when the sandbox refused the request. It prints the webhook's `message_id`, the "
        "gateway's last answer (`status`) and the `attempts` made."
    ),
}

COMMANDS_INTRO = """\
Every command takes `--config PATH`, before or after the command name
(`smsbridge --config X run` and `smsbridge run --config X` are the same): {config_help}.
Every command also takes `-h` / `--help`. What commands print as data (events, history,
parked messages) goes to standard output as JSON lines; progress and summaries go to
standard error.
"""


# -- the configuration reference -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One key of the configuration, as the reference shows it."""

    section: str  # the top-level section: "broker", "policies"
    key: str  # the TOML key within its section: "prefetch", "quiet_hours.start"
    type: str
    default: str  # rendered; "" when required
    required: bool
    constraints: tuple[str, ...]
    description: str

    @property
    def path(self) -> str:
        """`section.key`: how RULES and MISSING_DESCRIPTIONS name it."""
        return f"{self.section}.{self.key}"


@dataclass(frozen=True, slots=True)
class SectionDoc:
    name: str
    header: str  # "[broker]" or "[[providers]]"
    optional: bool  # absent turns the feature off ([ledger], [console])
    intro: str
    keys: tuple[KeyDoc, ...]


_NONE = type(None)
_SCALARS: Mapping[type, tuple[str, str]] = {
    str: ("string", "strings"),
    int: ("integer", "integers"),
    float: ("number", "numbers"),
    bool: ("boolean", "booleans"),
    SecretStr: ("string, *secret*", "strings, *secret*"),
}


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `None`, whether it allowed None)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not _NONE]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _model_of(annotation: Any) -> type[BaseModel] | None:
    inner, _ = _without_none(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None


def _list_item(annotation: Any) -> Any | None:
    inner, _ = _without_none(annotation)
    if get_origin(inner) is list:
        (item,) = get_args(inner)
        return item
    return None


def type_name(annotation: Any, *, plural: bool = False) -> str:
    """A field's type for a person: "integer", "list of strings", `"keep"` or `"replace"`."""
    inner, _ = _without_none(annotation)
    if get_origin(inner) is Literal:
        choices = [f"`{_toml(value)}`" for value in get_args(inner)]
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    item = _list_item(inner)
    if item is not None:
        return "list of " + type_name(item, plural=True)
    if _model_of(inner) is not None:
        return "tables" if plural else "table"
    if isinstance(inner, type) and issubclass(inner, PurePath):
        return "paths" if plural else "path"
    for kind, (one, many) in _SCALARS.items():
        if inner is kind:
            return many if plural else one
    raise TypeError(f"no name for the type {annotation!r}: teach smsbridge.reference")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _toml(value: Any) -> str:
    """A value as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, PurePath):
        return _toml(value.as_posix())
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


_UNITS = ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
_DURATIONS = ((86400, "day"), (3600, "hour"), (60, "minute"))


def _hint(name: str, value: Any) -> str:
    """A readable size or duration next to a large default: `1048576` (1 MiB)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return ""
    if name.endswith("bytes"):
        for size, unit in _UNITS:
            if value >= size and value % size == 0:
                return f" ({_number(value / size)} {unit})"
    if name.endswith("seconds"):
        for length, unit in _DURATIONS:
            if value >= length and value % length == 0:
                count = value / length
                return f" ({_number(count)} {unit}{'' if count == 1 else 's'})"
    return ""


def _default(name: str, field: FieldInfo) -> str:
    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None or value is PydanticUndefined:
        return "*unset*"
    if isinstance(value, BaseModel):
        return "*defaults*"
    return f"`{_toml(value)}`{_hint(name, value)}"


def _constraints(annotation: Any, field: FieldInfo) -> tuple[str, ...]:
    inner, _ = _without_none(annotation)
    is_list = _list_item(inner) is not None
    unit = ("item", "items") if is_list else ("character", "characters")
    found: list[str] = []
    for item in field.metadata:
        if isinstance(item, Ge):
            found.append(f"≥ {_toml(item.ge)}")
        elif isinstance(item, Gt):
            found.append(f"> {_toml(item.gt)}")
        elif isinstance(item, Le):
            found.append(f"≤ {_toml(item.le)}")
        elif isinstance(item, Lt):
            found.append(f"< {_toml(item.lt)}")
        elif isinstance(item, MinLen):
            n = item.min_length
            found.append(f"at least {n} {unit[0] if n == 1 else unit[1]}")
        elif isinstance(item, MaxLen):
            n = item.max_length
            found.append(f"at most {n} {unit[0] if n == 1 else unit[1]}")
        elif getattr(item, "pattern", None) is not None:
            found.append(f"matches `{item.pattern}`")
        else:
            raise TypeError(f"unknown constraint {item!r}: teach smsbridge.reference")
    return tuple(found)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _keys(
    section: str, model: type[BaseModel], prefix: str = "", within: str = ""
) -> Iterator[KeyDoc]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        path = f"{section}.{key}"
        description = field.description or MISSING_DESCRIPTIONS.get(path, "")
        text = _sentence(description)
        rule = RULES.get(path)
        if rule:
            text = f"{text} Checked: {rule}.".strip()
        nested = _model_of(field.annotation)
        if nested is not None:
            inline = ", ".join(f"{k} = …" for k in nested.model_fields)
            text = f"{text} An inline table, `{key} = {{ {inline} }}`: its keys follow.".strip()
        if within and field.is_required():
            text = f"{text} Required in `{within}`.".strip()
        yield KeyDoc(
            section=section,
            key=key,
            type=type_name(field.annotation),
            default=_default(name, field),
            required=field.is_required(),
            constraints=_constraints(field.annotation, field),
            description=text,
        )
        if nested is not None:
            yield from _keys(section, nested, f"{key}.", within=key)


def sections() -> list[SectionDoc]:
    """Every section of the configuration, in the order of SECTIONS."""
    fields = config.Config.model_fields
    unknown = set(fields) ^ set(SECTIONS)
    if unknown:
        raise KeyError(f"SECTIONS and config.Config differ on {sorted(unknown)}")
    found = []
    for name, intro in SECTIONS.items():
        field = fields[name]
        item = _list_item(field.annotation)
        model = _model_of(item if item is not None else field.annotation)
        if model is None:
            raise TypeError(f"config.Config.{name} is not a section (a model or a list of them)")
        _, optional = _without_none(field.annotation)
        found.append(
            SectionDoc(
                name=name,
                header=f"[[{name}]]" if item is not None else f"[{name}]",
                optional=optional,
                intro=intro,
                keys=tuple(_keys(name, model)),
            )
        )
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type_cell(key: KeyDoc) -> str:
    return ", ".join([key.type, *key.constraints])


def render_configuration() -> str:
    out = [BANNER.format(prog=PROG, source="smsbridge/config.py"), CONFIGURATION_INTRO]
    all_sections = sections()
    out.append("\n## Sections\n\n")
    for section in all_sections:
        out.append(f"- [`{section.header}`](#{section.name}): {section.intro}\n")
    for section in all_sections:
        out.append(f"\n## `{section.header}`\n\n{section.intro}\n")
        if section.header.startswith("[["):
            out.append(f"\nRepeat `{section.header}` for each entry.\n")
        out.append("\n| key | type | default | description |\n|---|---|---|---|\n")
        for key in section.keys:
            default = "**required**" if key.required else key.default
            out.append(
                f"| `{key.key}` | {_cell(_type_cell(key))} | {_cell(default)} "
                f"| {_cell(key.description)} |\n"
            )
    return "".join(out)


# -- the command-line reference ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandDoc:
    path: str  # "config check"
    help: str  # the one line in its parent's list
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return f"smsbridge {self.path}"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def commands(top: argparse.ArgumentParser | None = None) -> list[CommandDoc]:
    """Every command and subcommand, depth first in the parser's order."""
    found: list[CommandDoc] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        sub = _subparsers(parser)
        if sub is None:
            return
        helps = {a.dest: a.help or "" for a in sub._choices_actions}
        for name, child in sub.choices.items():
            path = f"{prefix} {name}".strip()
            found.append(CommandDoc(path, helps.get(name, ""), child))
            walk(path, child)

    walk("", top or cli.parser())
    return found


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments of a command, without help and subcommands."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _with_nargs(metavar: str, nargs: Any) -> str:
    if nargs == "?":
        return f"[{metavar}]"
    if nargs == "*":
        return f"[{metavar} ...]"
    if nargs == "+":
        return f"{metavar} [{metavar} ...]"
    return metavar


def _usage_item(action: argparse.Action) -> str:
    if not action.option_strings:
        return _with_nargs(_metavar(action), action.nargs)
    text = action.option_strings[-1]
    if _takes_value(action):
        text += " " + _with_nargs(_metavar(action), action.nargs)
    return text if action.required else f"[{text}]"


def usage(command: CommandDoc) -> str:
    """The command's usage line (argparse's own depends on the terminal's width)."""
    parts = [command.name]
    parts += [_usage_item(a) for a in _visible(command.parser) if a.option_strings]
    parts += [_usage_item(a) for a in _visible(command.parser) if not a.option_strings]
    sub = _subparsers(command.parser)
    if sub is not None:
        words = f"{sub.metavar or 'COMMAND'} ..."
        parts.append(words if sub.required else f"[{words}]")
    return " ".join(parts)


def _argument_help(action: argparse.Action) -> str:
    text = _sentence(action.help or "")
    choices = [str(c) for c in action.choices or ()]
    if choices and not all(c.lower() in text.lower() for c in choices):
        shown = ", ".join(f"`{c}`" for c in choices)
        text = f"{text} One of {shown}.".strip()
    default = action.default
    if (
        _takes_value(action)
        and default not in (None, argparse.SUPPRESS, [], "")
        and "default" not in text.lower()
    ):
        shown = " ".join(str(d) for d in default) if isinstance(default, list) else str(default)
        text = f"{text} Default: `{shown}`.".strip()
    return text


def _argument_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest}`"
    names = ", ".join(action.option_strings)
    if _takes_value(action):
        names += " " + _with_nargs(_metavar(action), action.nargs)
    return f"`{names}`"


def _example(parser: argparse.ArgumentParser) -> list[str]:
    """The lines of the command's `example:` epilog."""
    epilog = parser.epilog or ""
    _, found, rest = epilog.partition("example:")
    if not found:
        return []
    return [line.strip() for line in rest.strip("\n").splitlines() if line.strip()]


def _description(command: CommandDoc) -> str:
    text = command.parser.description or command.help
    return _sentence(text)


def exit_statuses(doc: str | None = None) -> list[tuple[str, str]]:
    """The `exit status:` paragraph of the CLI's docstring, as (status, meaning) pairs."""
    text = doc if doc is not None else cli.__doc__ or ""
    _, found, rest = text.partition("exit status:")
    if not found:
        raise ValueError("smsbridge.cli's docstring has no 'exit status:' paragraph")
    paragraph = " ".join(rest.strip().split("\n\n")[0].split())
    pairs = []
    for part in re.split(r";\s+(?=\d+\s)", paragraph.rstrip(".")):
        match = re.fullmatch(r"(\d+)\s+(.+)", part.strip())
        if match is None:
            raise ValueError(f"cannot read the exit status {part!r} in smsbridge.cli's docstring")
        pairs.append((match.group(1), _sentence(match.group(2))))
    return pairs


def _overview() -> str:
    """The CLI docstring's first paragraphs (before `exit status:`), unwrapped."""
    text = (cli.__doc__ or "").partition("exit status:")[0]
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _anchor(command: CommandDoc) -> str:
    """GitHub's anchor for the heading `smsbridge <path>`."""
    return "smsbridge-" + command.path.replace(" ", "-")


def render_commands() -> str:
    out = [
        BANNER.format(prog=PROG, source="smsbridge/cli.py"),
        f"# Command line reference\n\n{_overview()}\n\n",
        COMMANDS_INTRO.format(config_help=cli.CONFIG_HELP),
    ]
    every = commands()
    out.append("\n## Commands\n\n")
    for command in every:
        depth = command.path.count(" ")
        out.append(f"{'  ' * depth}- [`{command.name}`](#{_anchor(command)}): {command.help}\n")

    out.append("\n## Exit status\n\n| status | meaning |\n|---|---|\n")
    for status, meaning in exit_statuses():
        out.append(f"| `{status}` | {_cell(meaning)} |\n")
    out.append(
        "\nA bad command line (an unknown option, a missing argument) is exit status 2, with "
        "the usage on standard error.\n"
    )

    for command in every:
        out.append(f"\n## {command.name}\n\n{_description(command)}\n")
        out.append(f"\n```\n{usage(command)}\n```\n")
        arguments = [a for a in _visible(command.parser) if a.dest != "config"]
        if arguments:
            out.append("\n| argument | meaning |\n|---|---|\n")
            for action in arguments:
                out.append(
                    f"| {_cell(_argument_name(action))} | {_cell(_argument_help(action))} |\n"
                )
        children = [c for c in every if c.path.rsplit(" ", 1)[0] == command.path != c.path]
        if children:
            out.append("\nCommands:\n\n")
            for child in children:
                out.append(f"- [`{child.name}`](#{_anchor(child)}): {child.help}\n")
        example = _example(command.parser)
        if example:
            out.append("\nExample:\n\n```sh\n" + "\n".join(example) + "\n```\n")
        note = EXIT_NOTES.get(command.path)
        if note:
            out.append(f"\nExit status: {note}\n")
    return "".join(out)


# -- files -------------------------------------------------------------------------------------

RENDERERS: Mapping[str, Callable[[], str]] = {
    CONFIGURATION_PATH: render_configuration,
    COMMANDS_PATH: render_commands,
}


def render() -> dict[str, bytes]:
    """Every generated file: path relative to the repository root -> content."""
    return {path: make().encode("utf-8") for path, make in RENDERERS.items()}


def stale(root: Path = ROOT) -> list[str]:
    """Paths (relative to `root`) that are missing or different."""
    return sorted(
        path
        for path, content in render().items()
        if not (root / path).is_file() or (root / path).read_bytes() != content
    )


def write(root: Path = ROOT) -> list[str]:
    """Write every generated file that changed; return what changed."""
    changed = []
    for path, content in render().items():
        target = root / path
        if target.is_file() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        changed.append(path)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate docs/configuration.md and docs/commands.md from the code.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file is stale"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.check:
        paths = stale(root)
        if paths:
            print(f"stale generated docs (run `{PROG}`):", file=sys.stderr)
            for path in paths:
                print(f"  {path}", file=sys.stderr)
            return 1
        print("generated docs are up to date")
        return 0
    for path in write(root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
