"""`smsbridge` command line (CONTRACT §4)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from smsbridge import logs, topology
from smsbridge.config import Config, ConfigError, load_config, masked
from smsbridge.runner import WORKER_KINDS, run_until_signalled


def _config(args: argparse.Namespace, *, tool: bool = False) -> Config:
    """Load the configuration; command-line tools log warnings only, keeping stdout for data."""
    config = load_config(args.config)
    logs.configure("warning" if tool else config.logging.level, config.logging.format)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    asyncio.run(run_until_signalled(_config(args), gateway=True, workers=list(WORKER_KINDS)))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    asyncio.run(run_until_signalled(_config(args), gateway=True, workers=[]))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    asyncio.run(run_until_signalled(_config(args), gateway=False, workers=[args.kind]))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    sys.stdout.buffer.write(orjson.dumps(masked(config), option=orjson.OPT_INDENT_2) + b"\n")
    print("configuration OK", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from smsbridge.ops import tail

    config = _config(args, tool=True)
    url = config.broker.addresses()
    return asyncio.run(tail(url, args.pattern, count=args.count, timeout=args.timeout))


def cmd_send(args: argparse.Namespace) -> int:
    import uuid

    from smsbridge.ops import send

    config = _config(args, tool=True)
    request: dict[str, Any] = {"id": args.id or f"cli-{uuid.uuid4().hex}", "to": args.to}
    for key, value in (("from", args.from_), ("extension", args.extension), ("body", args.body)):
        if value is not None:
            request[key] = value
    if args.media:
        request["media_urls"] = args.media
    asyncio.run(send(config.broker.addresses(), request))
    print(request["id"])
    return 0


def cmd_parked(args: argparse.Namespace) -> int:
    from smsbridge.ops import parked

    config = _config(args, tool=True)
    ids = set(args.id) if args.id else None
    shown = asyncio.run(
        parked(
            config.broker.addresses(),
            args.stage,
            requeue=args.action == "requeue",
            ids=ids,
        )
    )
    for item in shown:
        sys.stdout.buffer.write(orjson.dumps(item) + b"\n")
    verb = "re-queued" if args.action == "requeue" else "parked"
    print(f"{len(shown)} {verb} in smsbridge.parked.{args.stage}", file=sys.stderr)
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from smsbridge.sandbox import AccountSpec, serve

    logs.configure("info", "auto")
    host, _, port = args.listen.rpartition(":")
    accounts = {
        args.access_key: AccountSpec(
            args.access_key,
            args.secret_key,
            sms_per_second=args.sms_per_second,
            mms_per_second=args.mms_per_second,
        )
    }
    options: dict[str, Any] = {"resend_interval": args.resend_interval}
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, int(port), accounts, **options))
    return 0


def cmd_sandbox_post(args: argparse.Namespace) -> int:
    from smsbridge.ops import sandbox_post

    media = [{"name": name} for name in args.media] if args.kind == "mms" else []
    return asyncio.run(
        sandbox_post(
            args.sandbox,
            {
                "gateway_url": args.gateway,
                "kind": args.kind,
                "form": args.form,
                "to": args.to,
                "from": args.from_,
                "body": args.body,
                "media": media,
            },
        )
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="smsbridge", description=__doc__)
    top.add_argument("--config", help="TOML configuration (default: $SMSBRIDGE_CONFIG or demo)")
    sub = top.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="gateway and every worker in one process").set_defaults(func=cmd_run)
    sub.add_parser("gateway", help="the HTTP receiver alone").set_defaults(func=cmd_gateway)
    worker = sub.add_parser("worker", help="one worker kind alone")
    worker.add_argument("kind", choices=WORKER_KINDS)
    worker.set_defaults(func=cmd_worker)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="action", required=True)
    config_sub.add_parser("check", help="validate and print, secrets masked").set_defaults(
        func=cmd_config_check
    )

    tail = sub.add_parser("tail", help="print events from smsbridge.events")
    tail.add_argument("pattern", nargs="?", default="#", help="topic pattern, e.g. 'inbound.*'")
    tail.add_argument("--count", type=int, default=None, help="exit after N events")
    tail.add_argument("--timeout", type=float, default=None, help="exit after S seconds")
    tail.set_defaults(func=cmd_tail)

    send = sub.add_parser("send", help="publish an OutboundRequest as a PBX service would")
    send.add_argument("--to", required=True)
    send.add_argument("--from", dest="from_")
    send.add_argument("--extension")
    send.add_argument("--body")
    send.add_argument("--media", nargs="*", default=[], help="media URLs (makes it an MMS)")
    send.add_argument("--id", help="request id (default: a new one)")
    send.set_defaults(func=cmd_send)

    parked = sub.add_parser("parked", help="list or re-queue parked messages")
    parked.add_argument("action", choices=("list", "requeue"))
    parked.add_argument("stage", nargs="?", default="outbound", choices=topology.STAGES)
    parked.add_argument("--id", action="append", help="only these message ids (repeatable)")
    parked.set_defaults(func=cmd_parked)

    sandbox = sub.add_parser("sandbox", help="a local Flowroute look-alike")
    sandbox.add_argument("--listen", default="127.0.0.1:8090")
    sandbox.add_argument("--access-key", default="sandbox-access")
    sandbox.add_argument("--secret-key", default="sandbox-secret")
    sandbox.add_argument("--sms-per-second", type=float, default=5)
    sandbox.add_argument("--mms-per-second", type=float, default=1)
    sandbox.add_argument("--resend-interval", type=float, default=30.0)
    sandbox.set_defaults(func=cmd_sandbox)
    sandbox_sub = sandbox.add_subparsers(dest="action")
    post = sandbox_sub.add_parser("post", help="make a running sandbox post an inbound webhook")
    post.add_argument("kind", choices=("sms", "mms"))
    post.add_argument("--sandbox", default="http://127.0.0.1:8090")
    post.add_argument("--gateway", default="http://127.0.0.1:8080/flowrouteinbound")
    post.add_argument("--form", choices=("jsonapi", "compact"), default="jsonapi")
    post.add_argument("--to", default="12025550100")
    post.add_argument("--from", dest="from_", default="12065550142")
    post.add_argument("--body", default="Hello from the sandbox")
    post.add_argument("--media", nargs="*", default=["photo.jpg"])
    post.set_defaults(func=cmd_sandbox_post)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"smsbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
