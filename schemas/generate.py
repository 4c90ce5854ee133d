"""Write the JSON Schemas, the AsyncAPI document and the OpenAPI document generated from the
models.

python -m schemas.generate          # (re)write schemas/json/*.schema.json, schemas/asyncapi.json,
                                    # schemas/openapi.json
python -m schemas.generate --check  # exit 1, listing them, if any file is stale (for CI)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from schemas import asyncapi, history
from schemas.flowroute import CompactReceipt, CompactWebhook, JsonApiReceipt, JsonApiWebhook
from schemas.messages import InboundMessage, OutboundRequest, PolicyEvent, StatusEvent

ROOT = Path(__file__).resolve().parent.parent
JSON_DIR = "schemas/json"
ASYNCAPI_PATH = "schemas/asyncapi.json"
OPENAPI_PATH = "schemas/openapi.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# schemas/json/<name>.schema.json
SCHEMAS: dict[str, type[BaseModel]] = {
    "inbound_message": InboundMessage,
    "outbound_request": OutboundRequest,
    "status_event": StatusEvent,
    "policy_event": PolicyEvent,
    "flowroute_webhook_jsonapi": JsonApiWebhook,
    "flowroute_webhook_compact": CompactWebhook,
    "flowroute_receipt_jsonapi": JsonApiReceipt,
    "flowroute_receipt_compact": CompactReceipt,
}


def dumps(document: Any) -> bytes:
    """Deterministic JSON: two-space indent, sorted keys, trailing newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema(by_alias=True)}


def render() -> dict[str, bytes]:
    """The messaging contract's files (JSON Schemas, AsyncAPI): path relative to the
    repository root -> content."""
    files = {
        f"{JSON_DIR}/{name}.schema.json": dumps(json_schema(model))
        for name, model in SCHEMAS.items()
    }
    files[ASYNCAPI_PATH] = dumps(asyncapi.build())
    return files


def render_http() -> dict[str, bytes]:
    """The console's history API: its OpenAPI document."""
    return {OPENAPI_PATH: dumps(history.openapi())}


def render_all() -> dict[str, bytes]:
    """Every generated file (what `write` writes and `stale` checks)."""
    return {**render(), **render_http()}


def _orphans(root: Path, files: dict[str, bytes]) -> list[str]:
    """Generated-looking files in schemas/json that no model produces any more."""
    found = (p.relative_to(root).as_posix() for p in (root / JSON_DIR).glob("*.schema.json"))
    return sorted(path for path in found if path not in files)


def stale(root: Path = ROOT) -> list[str]:
    """Paths (relative to `root`) that are missing, different or left over."""
    files = render_all()
    out = []
    for path, content in files.items():
        target = root / path
        if not target.is_file() or target.read_bytes() != content:
            out.append(path)
    return sorted(out + _orphans(root, files))


def write(root: Path = ROOT) -> list[str]:
    """Write every generated file that changed and remove leftovers; return what changed."""
    files = render_all()
    changed = []
    for path, content in files.items():
        target = root / path
        if target.is_file() and target.read_bytes() == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        changed.append(path)
    for path in _orphans(root, files):
        (root / path).unlink()
        changed.append(path)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas.generate",
        description="Generate the JSON Schemas, the AsyncAPI and the OpenAPI documents from the "
        "models.",
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
            print("stale generated files (run `python -m schemas.generate`):", file=sys.stderr)
            for path in paths:
                print(f"  {path}", file=sys.stderr)
            return 1
        print("generated files are up to date")
        return 0
    for path in write(root):
        print(f"wrote {path}" if (root / path).exists() else f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
