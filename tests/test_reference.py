"""The documentation in docs/: the generated references are up to date and complete, the
hand-written contract's examples match the code, and nothing the project ships points
outside it."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from schemas import history as history_schemas
from schemas import messages
from smsbridge import cli, config, reference
from smsbridge.config import Config, parse_config

ROOT = reference.ROOT
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
COMMANDS = DOCS / "commands.md"
CONTRACT_MD = DOCS / "contract.md"

# -- generated files ---------------------------------------------------------------------------


def test_generated_docs_are_up_to_date() -> None:
    assert reference.stale() == [], "stale docs: run `python -m smsbridge.reference`"


def test_render_is_deterministic_and_writes_only_the_references() -> None:
    first = reference.render()
    assert first == reference.render()
    assert set(first) == {"docs/configuration.md", "docs/commands.md"}
    for path, content in first.items():
        text = content.decode("utf-8")
        assert text.startswith("<!-- Generated from "), path
        assert text.endswith("\n") and not text.endswith("\n\n"), path


def test_check_reports_stale_files_and_write_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert reference.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "python -m smsbridge.reference" in err
    assert "docs/configuration.md" in err and "docs/commands.md" in err

    assert reference.main(["--root", str(tmp_path)]) == 0
    assert reference.stale(tmp_path) == []
    assert reference.main(["--check", "--root", str(tmp_path)]) == 0

    (tmp_path / "docs/commands.md").write_text("edited by hand\n")
    assert reference.stale(tmp_path) == ["docs/commands.md"]
    assert reference.write(tmp_path) == ["docs/commands.md"]
    assert reference.write(tmp_path) == []


# -- the configuration reference -------------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """The model inside `X | None` or `list[X]`, else the annotation itself."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    inner = _unwrap(annotation)
    return isinstance(inner, type) and issubclass(inner, BaseModel)


def _model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}"
        if _is_model(field.annotation):
            yield from _model_keys(_unwrap(field.annotation), f"{prefix}{name}.")


def config_keys() -> set[tuple[str, str]]:
    """Every (section, key) of the configuration, walked independently of the generator."""
    found = set()
    for section, field in Config.model_fields.items():
        assert _is_model(field.annotation), f"{section} is not a section"
        for key in _model_keys(_unwrap(field.annotation)):
            found.add((section, key))
    return found


_SECTION_HEADING = re.compile(r"^## `\[\[?([a-z_]+)\]\]?`$")
_ROW = re.compile(r"^\| `([^`]+)` \|(.*)\|$")


def documented_keys() -> dict[tuple[str, str], list[str]]:
    """(section, key) -> the row's cells, as docs/configuration.md shows them."""
    rows: dict[tuple[str, str], list[str]] = {}
    section = None
    for line in CONFIGURATION.read_text("utf-8").splitlines():
        heading = _SECTION_HEADING.match(line)
        if heading:
            section = heading.group(1)
            continue
        row = _ROW.match(line)
        if row and section is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.group(2))]
            assert (section, row.group(1)) not in rows, f"{section}.{row.group(1)} twice"
            rows[(section, row.group(1))] = cells
    return rows


def test_configuration_reference_has_every_section_and_key() -> None:
    rows = documented_keys()
    expected = config_keys()
    assert len(expected) > 60
    assert set(rows) - expected == set(), "documented keys that do not exist"
    assert expected - set(rows) == set(), "keys missing from docs/configuration.md"
    for (section, key), cells in rows.items():
        type_, default, description = cells
        assert type_, f"{section}.{key} has no type"
        assert default, f"{section}.{key} has no default (or 'required')"
        assert description, f"{section}.{key} has no description"


def test_required_keys_and_defaults_are_shown() -> None:
    rows = documented_keys()
    assert rows[("providers", "access_key")][1] == "**required**"
    assert rows[("broker", "prefetch")][1] == "`200`"
    assert rows[("media", "allowed_ports")][1] == "`[80, 443]`"
    assert rows[("gateway", "max_body_bytes")][1] == "`1048576` (1 MiB)"
    assert rows[("policies", "quiet_hours.start")][1] == "**required**"
    assert "≥ 1" in rows[("broker", "prefetch")][0]
    assert "at least 24 characters" in rows[("console", "token")][0]
    assert "*secret*" in rows[("ledger", "url")][0]


def test_every_field_has_a_description_and_no_stopgap_is_stale() -> None:
    """A field's description comes from `Field(description=...)`; the generator's stopgap
    table covers the rest until they are added there, and must not outlive them."""
    by_path: dict[str, str | None] = {}
    for section, field in Config.model_fields.items():
        model = _unwrap(field.annotation)
        for key in _model_keys(model):
            owner: type[BaseModel] = model
            *parents, name = key.split(".")
            for parent in parents:
                owner = _unwrap(owner.model_fields[parent].annotation)
            by_path[f"{section}.{key}"] = owner.model_fields[name].description
    lacking = {path for path, text in by_path.items() if not text}
    covered = set(reference.MISSING_DESCRIPTIONS)
    assert lacking - covered == set(), "fields without a description anywhere"
    assert covered - lacking == set(), (
        "reference.MISSING_DESCRIPTIONS entries whose field now has a description in "
        "smsbridge/config.py (or no longer exists): delete them"
    )
    assert set(reference.RULES) <= set(by_path), "reference.RULES names unknown fields"
    assert list(reference.SECTIONS) != [] and set(reference.SECTIONS) == set(Config.model_fields)


# -- the command-line reference ----------------------------------------------------------------


def _cli_commands() -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((f"{prefix} {name}".strip(), child))
                    walk(f"{prefix} {name}", child)

    walk("", cli.parser())
    return found


def _command_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    current = None
    for line in COMMANDS.read_text("utf-8").splitlines():
        if line.startswith("## "):
            heading = line[3:]
            current = (
                heading.removeprefix("smsbridge ") if heading.startswith("smsbridge ") else None
            )
            if current is not None:
                assert current not in sections, f"{heading} twice"
                sections[current] = ""
            continue
        if current is not None:
            sections[current] += line + "\n"
    return sections


def test_commands_reference_has_every_command_option_and_example() -> None:
    sections = _command_sections()
    commands = _cli_commands()
    assert len(commands) >= 20
    assert set(sections) == {path for path, _ in commands}
    for path, command in commands:
        text = sections[path]
        assert f"smsbridge {path}" in text, f"{path}: no usage"
        for action in command._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.dest == "config":
                continue  # global: documented once, and in every usage line
            if action.option_strings:
                for option in action.option_strings:
                    assert f"`{option}" in text, f"smsbridge {path}: {option} missing"
            else:
                assert f"| `{action.dest}` |" in text, f"smsbridge {path}: {action.dest} missing"
            assert action.help, f"smsbridge {path} {action.dest}: no help"
            help_text = " ".join(action.help.split())[1:]  # the generator capitalizes it
            assert help_text in text, f"smsbridge {path} {action.dest}: its help is missing"
        epilog = command.epilog or ""
        if "example:" in epilog:
            for line in epilog.partition("example:")[2].strip().splitlines():
                assert line.strip() in text, f"smsbridge {path}: example missing"


def test_exit_statuses_come_from_the_cli() -> None:
    statuses = dict(reference.exit_statuses())
    assert {"0", "1", "2", "130"} <= set(statuses)
    text = COMMANDS.read_text("utf-8")
    for status, meaning in statuses.items():
        assert f"| `{status}` | {meaning} |" in text
    paths = {path for path, _ in _cli_commands()}
    assert set(reference.EXIT_NOTES) <= paths, "reference.EXIT_NOTES names unknown commands"
    with pytest.raises(ValueError):
        reference.exit_statuses("no such paragraph")


def test_global_config_option_is_documented() -> None:
    text = COMMANDS.read_text("utf-8")
    assert "`--config PATH`" in text
    assert cli.CONFIG_HELP in text


# -- examples in the docs match the code -------------------------------------------------------

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_SCHEMA_MARK = re.compile(r"<!-- schema: (\w+) -->\n```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MODELS: dict[str, type[BaseModel]] = {
    "OutboundRequest": messages.OutboundRequest,
    "InboundMessage": messages.InboundMessage,
    "StatusEvent": messages.StatusEvent,
    "PolicyEvent": messages.PolicyEvent,
    "MessagePage": history_schemas.MessagePage,
    "MessageDetail": history_schemas.MessageDetail,
    "ParkedList": history_schemas.ParkedList,
    "AccountList": history_schemas.AccountList,
    "OptOutList": history_schemas.OptOutList,
}


def _docs() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_json_examples_in_the_contract_validate_against_their_models() -> None:
    text = CONTRACT_MD.read_text("utf-8")
    marked = _SCHEMA_MARK.findall(text)
    every = [body for lang, body in _FENCE.findall(text) if lang == "json"]
    assert len(marked) == len(every), "every JSON example names its model (<!-- schema: X -->)"
    assert {name for name, _ in marked} >= {
        "OutboundRequest",
        "InboundMessage",
        "StatusEvent",
        "PolicyEvent",
    }
    for name, body in marked:
        assert name in MODELS, f"unknown model {name}"
        MODELS[name].model_validate(json.loads(body))


def _check_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> None:
    for key, value in data.items():
        assert key in model.model_fields, f"{where}{key} is not a configuration key"
        annotation = model.model_fields[key].annotation
        if not _is_model(annotation):
            continue
        nested = _unwrap(annotation)
        for item in value if isinstance(value, list) else [value]:
            assert isinstance(item, dict), f"{where}{key} should be a table"
            _check_keys(item, nested, f"{where}{key}.")


def _toml_blocks(path: Path) -> list[str]:
    return [body for lang, body in _FENCE.findall(path.read_text("utf-8")) if lang == "toml"]


def test_toml_examples_use_only_real_configuration_keys() -> None:
    count = 0
    for path in _docs():
        for body in _toml_blocks(path):
            _check_keys(tomllib.loads(body), Config, f"{path.name}: ")
            count += 1
    assert count >= 6


def test_configuration_examples_are_valid_configurations() -> None:
    blocks = _toml_blocks(CONFIGURATION)
    assert len(blocks) >= 2
    for body in blocks:
        env = {name: "x" * 32 for name in re.findall(r"\$\{(\w+)\}", body)}
        parse_config(body, env=env, source="docs/configuration.md")


# -- links, and nothing pointing outside the project ------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    lines = path.read_text("utf-8").splitlines()
    return {_slug(line.lstrip("#")) for line in lines if re.match(r"^#{1,6} ", line)}


def test_links_in_the_docs_resolve_inside_the_project() -> None:
    checked = 0
    for path in _docs():
        for target in _LINK.findall(path.read_text("utf-8")):
            assert not target.startswith(("http://", "https://", "/", "file:")), (
                f"{path.name}: {target} points outside the project"
            )
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            assert resolved.is_relative_to(ROOT), f"{path.name}: {target} leaves the project"
            assert resolved.exists(), f"{path.name}: {target} does not exist"
            if anchor:
                assert anchor in _anchors(resolved), f"{path.name}: no anchor {target}"
            checked += 1
    assert checked > 40


# The external document's name, and paths that lead out of the project, spelled so that this
# file does not contain them.
_WORD = "CON" + "TRACT"
_OUTSIDE = re.compile(("\\b" + _WORD + "\\b|\\.\\./sh" + "ared\\b|/work/sh" + "ared\\b").encode())
# Occurrences that are not references to it.
_ALLOWED = {
    # a legal term in a third-party licence
    ("console/static/htmx.LICENSE.txt", f"AN ACTION OF {_WORD}, NEGLIGENCE OR OTHER TORTIOUS"),
    # a test that checks its absence from the OpenAPI document
    ("tests/test_console_api.py", f'assert "{_WORD}" not in orjson.dumps(doc).decode()'),
}


def _ignored_patterns() -> list[str]:
    lines = (ROOT / ".gitignore").read_text("utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _is_ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if "/" in bare:
            if relative == bare or relative.startswith(bare + "/"):
                return True
        elif any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def project_files() -> list[str]:
    """Every file the project ships: the tree, without .git and what .gitignore ignores."""
    patterns = _ignored_patterns()
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        here = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if here == "." else f"{here}/"
        subdirectories[:] = [
            d
            for d in subdirectories
            if f"{prefix}{d}" != ".git" and not _is_ignored(f"{prefix}{d}", patterns)
        ]
        found += [f"{prefix}{f}" for f in files if not _is_ignored(f"{prefix}{f}", patterns)]
    return sorted(found)


def _mentions(files: list[str]) -> list[str]:
    found = []
    for relative in files:
        for number, line in enumerate((ROOT / relative).read_bytes().splitlines(), 1):
            if _OUTSIDE.search(line):
                text = line.decode("utf-8", "replace").strip()
                if not any(
                    text.startswith(allowed) for path, allowed in _ALLOWED if path == relative
                ):
                    found.append(f"{relative}:{number}: {text[:120]}")
    return found


def test_the_docs_and_the_generator_mention_nothing_outside_the_project() -> None:
    mine = [f for f in project_files() if f.startswith("docs/")]
    mine += ["smsbridge/reference.py", "tests/test_reference.py"]
    assert "docs/contract.md" in mine
    assert _mentions(mine) == []


def test_no_shipped_file_mentions_the_external_contract_document() -> None:
    files = project_files()
    assert "smsbridge/config.py" in files and "docs/contract.md" in files
    assert not any(f.startswith((".venv/", ".git/")) or ".egg-info/" in f for f in files)
    assert _mentions(files) == [], "name the project's own docs (docs/contract.md) instead"


def test_the_mention_check_finds_what_it_should() -> None:
    assert _OUTSIDE.search(f"see {_WORD} §1".encode())
    assert _OUTSIDE.search(b"see ../sh" + b"ared/flowroute/FACTS.md")
    assert not _OUTSIDE.search(f"{_WORD}_VERSION = '1.1.0'".encode())
    assert not _OUTSIDE.search(b"the public contract")
    assert config.RESERVED_PATHS  # the generator's rules read it
