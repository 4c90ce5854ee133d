"""smsbridge: a bridge between a PBX and Flowroute's SMS/MMS API through RabbitMQ.

Run its components (run, gateway, worker, console), act as a PBX service would (send, tail),
and look after a deployment (config check, doctor, flowroute setup, parked, history, optout,
db). Global options (--config) go before or after the command.

exit status: 0 success; 1 the command ran but something failed (a doctor check, a message or
opt-out not found, a service unreachable, keys refused); 2 bad usage or configuration;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from smsbridge import eventloop, logs, topology
from smsbridge.config import Config, ConfigError, PolicyConfig, load_config, masked
from smsbridge.runner import WORKER_KINDS, run_until_signalled

CONFIG_HELP = (
    "the TOML configuration (default: $SMSBRIDGE_CONFIG, else the built-in demo configuration "
    "for the local sandbox)"
)


class UsageError(Exception):
    """The configuration lacks what this command needs (exit status 2)."""


def _config(args: argparse.Namespace, *, tool: bool = False) -> Config:
    """Load the configuration; command-line tools log warnings only, keeping stdout for data."""
    config = load_config(args.config)
    logs.configure("warning" if tool else config.logging.level, config.logging.format)
    logs.mask_configured(config)  # whatever characters the secrets hold
    return config


def _needs(config: Config, *sections: str) -> None:
    missing = [f"[{name}]" for name in sections if getattr(config, name) is None]
    if missing:
        raise UsageError(f"this command needs {' and '.join(missing)} in the configuration")


# -- components ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    eventloop.run(run_until_signalled(config, True, list(WORKER_KINDS), console=True))
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    eventloop.run(run_until_signalled(_config(args), True, []))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    eventloop.run(run_until_signalled(_config(args), False, [args.kind]))
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    config = _config(args)
    _needs(config, "ledger", "console")
    eventloop.run(run_until_signalled(config, False, [], console=True))
    return 0


# -- what a PBX service does ----------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    from smsbridge.ops import send

    config = _config(args, tool=True)
    request: dict[str, Any] = {"id": args.id or f"cli-{uuid.uuid4().hex}", "to": args.to}
    for key, value in (("from", args.from_), ("extension", args.extension), ("body", args.body)):
        if value is not None:
            request[key] = value
    if args.media:
        request["media_urls"] = args.media
    eventloop.run(send(config.broker.addresses(), request))
    print(request["id"])
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from smsbridge.ops import tail

    config = _config(args, tool=True)
    return eventloop.run(
        tail(config.broker.addresses(), args.pattern, count=args.count, timeout=args.timeout)
    )


# -- looking after a deployment -------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    from smsbridge import safety

    config = load_config(args.config)
    sys.stdout.buffer.write(orjson.dumps(masked(config), option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()
    for number in config.numbers:
        print(f"number {number.number}: {describe(config.policy_of(number))}", file=sys.stderr)
    for problem in safety.warnings(config):  # valid, so still exit 0, but not silently
        print(f"warning: {problem}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return 0


def describe(policy: PolicyConfig | None) -> str:
    """What a number's policy does, in one line."""
    if policy is None:
        return "no policy"
    rules = []
    if policy.opt_out:
        rules.append("STOP/START/HELP keywords")
    if policy.allowed_countries is not None:
        rules.append("countries " + ",".join(policy.allowed_countries))
    if policy.quiet_hours is not None:
        q = policy.quiet_hours
        rules.append(f"quiet hours {q.start}-{q.end} {q.timezone}")
    if policy.max_segments is not None:
        rules.append(f"at most {policy.max_segments} segments")
    if policy.smart_quotes == "replace":
        rules.append("smart quotes replaced")
    return f"policy {policy.name}: " + ("; ".join(rules) or "no rule on")


def cmd_doctor(args: argparse.Namespace) -> int:
    from smsbridge import doctor

    config = _config(args, tool=True)
    ok = eventloop.run(doctor.run(config, lambda check: print(check.line(), flush=True)))
    return 0 if ok else 1


def cmd_flowroute_setup(args: argparse.Namespace) -> int:
    from smsbridge.flowroute.setup import SetupError, set_up

    config = _config(args, tool=True)
    providers = [p for p in config.providers if args.provider in (None, p.name)]
    if not providers:
        raise UsageError(f"no provider named {args.provider!r} in the configuration")

    async def all_of_them() -> int:
        import aiohttp

        from smsbridge.flowroute.client import SendError

        failed = 0
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            for provider in providers:
                try:
                    await set_up(config, provider, dry_run=args.dry_run, say=print, session=session)
                except (SetupError, SendError) as exc:
                    reason = exc.reason if isinstance(exc, SendError) else str(exc)
                    print(f"{provider.name}: not set up: {reason}", file=sys.stderr)
                    failed += 1
        return 1 if failed else 0

    return eventloop.run(all_of_them())


def cmd_parked(args: argparse.Namespace) -> int:
    config = _config(args, tool=True)
    requeue = args.action == "requeue"
    if requeue and args.all and args.id:
        raise UsageError("give --id or --all, not both")
    ids = set(args.id) if args.id else None
    from smsbridge.parking import RequeueStopped

    try:
        shown, left = eventloop.run(_parked(config, args.stage, requeue=requeue, ids=ids))
    except RequeueStopped as exc:
        for done in exc.done:
            sys.stdout.buffer.write(orjson.dumps(done.view()) + b"\n")
        print(f"requeue stopped: {exc}", file=sys.stderr)
        return 1
    for item in shown:
        sys.stdout.buffer.write(orjson.dumps(item) + b"\n")
    verb = "re-queued" if requeue else "parked"
    print(f"{len(shown)} {verb} in smsbridge.parked.{args.stage}", file=sys.stderr)
    for message_id, reason in left:
        print(f"not re-queued, still parked: {message_id}: {reason}", file=sys.stderr)
    return 1 if left else 0


async def _parked(
    config: Config, stage: str, *, requeue: bool, ids: set[str] | None
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(the messages listed or re-queued, (id, reason) of those a requeue left parked)."""
    from smsbridge.ops import parked
    from smsbridge.progress import progress

    if not requeue:
        return await parked(config.broker.addresses(), stage, requeue=False, ids=ids)
    with progress(f"requeue {stage}", total=len(ids) if ids else None) as bar:
        if not (stage == "outbound" and config.ledger is not None):
            return await parked(
                config.broker.addresses(), stage, requeue=True, ids=ids, progress=bar.update
            )
        from smsbridge.ledger.connection import Ledger
        from smsbridge.ledger.outbound import reopen

        ledger = Ledger(config.ledger, "parked")
        await ledger.start()
        try:
            await ledger.wait_available(15)
            return await parked(
                config.broker.addresses(),
                stage,
                requeue=True,
                ids=ids,
                # A request the ledger settled as failed may be sent again after a fix.
                before_requeue=lambda request_id: reopen(ledger, [request_id]),
                progress=bar.update,
            )
        finally:
            await ledger.close()


def cmd_history(args: argparse.Namespace) -> int:
    from smsbridge.ledger import tools

    config = _config(args, tool=True)
    _needs(config, "ledger")
    assert config.ledger is not None
    return eventloop.run(
        tools.history(
            config.ledger,
            message_id=args.id,
            number=args.number,
            extension=args.extension,
            limit=args.limit,
        )
    )


def cmd_optout(args: argparse.Namespace) -> int:
    from smsbridge.ledger import tools

    config = _config(args, tool=True)
    _needs(config, "ledger")
    assert config.ledger is not None
    return eventloop.run(
        tools.optout(config.ledger, args.action, args.number, getattr(args, "recipient", None))
    )


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from smsbridge.ledger import tools

    config = _config(args, tool=True)
    _needs(config, "ledger")
    assert config.ledger is not None
    return eventloop.run(tools.migrate(config.ledger))


def cmd_db_sweep(args: argparse.Namespace) -> int:
    from smsbridge.ledger import tools

    config = _config(args, tool=True)
    _needs(config, "ledger")
    assert config.ledger is not None
    return eventloop.run(tools.sweep(config.ledger))


# -- the sandbox ------------------------------------------------------------------------------


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
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(serve(host, int(port), accounts, resend_interval=args.resend_interval))
    return 0


def cmd_sandbox_post(args: argparse.Namespace) -> int:
    from smsbridge.ops import sandbox_post

    return eventloop.run(
        sandbox_post(
            args.sandbox,
            {
                "gateway_url": args.gateway,
                "kind": args.kind,
                "form": args.form,
                "to": args.to,
                "from": args.from_,
                "body": args.body,
            },
            media=args.media if args.kind == "mms" else [],
        )
    )


# -- the parser -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # On every subcommand too, so that `smsbridge run --config X` works; SUPPRESS keeps a
    # value given before the command.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP)

    top = argparse.ArgumentParser(
        prog="smsbridge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  smsbridge run --config /etc/smsbridge/smsbridge.toml",
    )
    top.add_argument("--config", metavar="PATH", default=None, help=CONFIG_HELP)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        where: Any,
        name: str,
        help_: str,
        example: str,
        func: Callable[[argparse.Namespace], int] | None = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = where.add_parser(
            name,
            help=help_,
            parents=[common],
            description=description or help_[0].upper() + help_[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if func is not None:
            cmd.set_defaults(func=func)
        return cmd

    # components
    command(
        sub,
        "run",
        "run the gateway, every worker and the console in one process",
        "smsbridge run --config /etc/smsbridge/smsbridge.toml",
        cmd_run,
        "Run the gateway, the resolver, media and outbound workers, and (with [ledger] and "
        "[console]) the console, in one process, until SIGINT or SIGTERM. Without a "
        "configuration, a demo against the local sandbox (`smsbridge sandbox`).",
    )
    command(
        sub,
        "gateway",
        "run the HTTP receiver alone (Flowroute's webhooks, receipts, media)",
        "smsbridge gateway --config /etc/smsbridge/smsbridge.toml",
        cmd_gateway,
    )
    worker = command(
        sub,
        "worker",
        "run one kind of worker alone; run as many replicas as needed",
        "smsbridge worker outbound --config /etc/smsbridge/smsbridge.toml",
        cmd_worker,
    )
    worker.add_argument(
        "kind",
        choices=WORKER_KINDS,
        help="resolver (webhooks to InboundMessages), media (MMS downloads), outbound (sends)",
    )
    command(
        sub,
        "console",
        "run the history API and the operator console alone (needs [ledger] and [console])",
        "smsbridge console --config /etc/smsbridge/smsbridge.toml",
        cmd_console,
    )

    # what a PBX service does
    send = command(
        sub,
        "send",
        "publish an OutboundRequest, as a PBX service would; prints its id",
        'smsbridge send --extension 100 --to +12065550142 --body "Your appointment is confirmed"',
        cmd_send,
    )
    send.add_argument(
        "--to", required=True, metavar="NUMBER", help="the recipient, E.164 ('+' optional)"
    )
    send.add_argument(
        "--from", dest="from_", metavar="NUMBER", help="one of our numbers to send from"
    )
    send.add_argument(
        "--extension",
        metavar="EXT",
        help="the sending extension: picks the number whose source lists it",
    )
    send.add_argument("--body", metavar="TEXT", help="the text (optional for an MMS)")
    send.add_argument("--media", nargs="*", default=[], metavar="URL", help="media URLs (an MMS)")
    send.add_argument("--id", help="the request id (default: a new one)")

    tail = command(
        sub,
        "tail",
        "print events from smsbridge.events as JSON lines, as a PBX service sees them",
        "smsbridge tail 'status.*' --count 3",
        cmd_tail,
    )
    tail.add_argument(
        "pattern",
        nargs="?",
        default="#",
        help="a topic pattern: inbound.100, inbound.*, status.*, policy.* (default: all)",
    )
    tail.add_argument("--count", type=int, default=None, help="exit after this many events")
    tail.add_argument("--timeout", type=float, default=None, help="exit after this many seconds")

    # looking after a deployment
    config = sub.add_parser("config", help="configuration tools", parents=[common])
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        config_sub,
        "check",
        "validate the configuration and print what it resolves to, secrets masked",
        "smsbridge config check --config /etc/smsbridge/smsbridge.toml",
        cmd_config_check,
    )
    command(
        sub,
        "doctor",
        "check everything a deployment needs, one line per check (ok, warn, FAIL)",
        "smsbridge doctor --config /etc/smsbridge/smsbridge.toml",
        cmd_doctor,
        "Check the broker (every node) and its topology, the ledger and its schema, each "
        "provider's keys (nothing is sent), public_url, allow_ips, dlr_secret, the media "
        "directory and the clock. Each failure says how to fix it. Exit status 1 when a check "
        "fails; warnings do not.",
    )
    flowroute = sub.add_parser("flowroute", help="Flowroute account tools", parents=[common])
    flowroute_sub = flowroute.add_subparsers(dest="action", required=True, metavar="ACTION")
    setup = command(
        flowroute_sub,
        "setup",
        "point the account's SMS and MMS callbacks at this gateway",
        "smsbridge flowroute setup --dry-run --config /etc/smsbridge/smsbridge.toml",
        cmd_flowroute_setup,
        "Check each provider's keys, then set its account's SMS and MMS callback URLs to "
        "public_url + '/' + its numbers' url_prefix. Refused when an account's numbers use "
        "more than one url_prefix. Prints what it changed.",
    )
    setup.add_argument("--provider", metavar="NAME", help="only this provider (default: all)")
    setup.add_argument("--dry-run", action="store_true", help="check and print, change nothing")

    parked = command(
        sub,
        "parked",
        "list parked messages (with their reasons), or requeue them after a fix",
        "smsbridge parked requeue outbound --all",
        cmd_parked,
        "List (without consuming) or requeue the messages parked in smsbridge.parked.<stage>. "
        "A requeued message goes back to where it first entered, with a clean slate.",
    )
    parked.add_argument("action", choices=("list", "requeue"), help="what to do")
    parked.add_argument(
        "stage",
        nargs="?",
        default="outbound",
        choices=topology.STAGES,
        help="inbound, media or outbound (default: outbound)",
    )
    parked.add_argument(
        "--id", action="append", metavar="ID", help="only this message id (repeatable)"
    )
    parked.add_argument(
        "--all", action="store_true", help="every parked message of the stage (the default)"
    )

    history = command(
        sub,
        "history",
        "search the ledger's history (JSON lines), or show one message with its timeline",
        "smsbridge history --number +12065550142 --limit 20",
        cmd_history,
    )
    history.add_argument("id", nargs="?", help="one message id (Flowroute's, or a request id)")
    history.add_argument("--number", metavar="NUMBER", help="either party, E.164")
    history.add_argument(
        "--extension", metavar="EXT", help="the destination (inbound) or sender (outbound)"
    )
    history.add_argument("--limit", type=int, default=50, help="at most this many (max 500)")

    optout = sub.add_parser(
        "optout", help="the opt-out list (who texted STOP to which number)", parents=[common]
    )
    optout_sub = optout.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = command(
        optout_sub,
        "list",
        "print the opt-outs as JSON lines",
        "smsbridge optout list --number +12025551234",
        cmd_optout,
    )
    listing.add_argument("--number", metavar="NUMBER", help="only those of this number of ours")
    for action, text, example in (
        ("add", "opt a recipient out of one of our numbers", "add"),
        ("remove", "opt a recipient back in", "remove"),
    ):
        change = command(
            optout_sub,
            action,
            text,
            f"smsbridge optout {example} +12025551234 +12065550142",
            cmd_optout,
        )
        change.add_argument("number", help="our number, E.164")
        change.add_argument("recipient", help="their number, E.164")

    db = sub.add_parser("db", help="the ledger's database", parents=[common])
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(
        db_sub,
        "migrate",
        "create or migrate the ledger schema (components also do it at start)",
        "smsbridge db migrate --config /etc/smsbridge/smsbridge.toml",
        cmd_db_migrate,
    )
    command(
        db_sub,
        "sweep",
        "delete history older than ledger.retention_days now (workers do it hourly)",
        "smsbridge db sweep --config /etc/smsbridge/smsbridge.toml",
        cmd_db_sweep,
    )

    # the sandbox
    sandbox = command(
        sub,
        "sandbox",
        "run a local Flowroute look-alike (sends, receipts, inbound webhooks, faults)",
        "smsbridge sandbox --listen 127.0.0.1:8090",
        cmd_sandbox,
    )
    sandbox.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT to listen on")
    sandbox.add_argument("--access-key", default="sandbox-access", help="the account's access key")
    sandbox.add_argument("--secret-key", default="sandbox-secret", help="the account's secret key")
    sandbox.add_argument("--sms-per-second", type=float, default=5, help="the SMS rate limit")
    sandbox.add_argument("--mms-per-second", type=float, default=1, help="the MMS rate limit")
    sandbox.add_argument(
        "--resend-interval",
        type=float,
        default=30.0,
        help="seconds between resends of a webhook not answered 200 (Flowroute: 30)",
    )
    sandbox_sub = sandbox.add_subparsers(dest="action", metavar="ACTION")
    post = command(
        sandbox_sub,
        "post",
        "make a running sandbox post an inbound SMS or MMS webhook to the gateway",
        "smsbridge sandbox post mms --body 'The storefront' --media ./photo.jpg",
        cmd_sandbox_post,
    )
    post.add_argument("kind", choices=("sms", "mms"), help="an SMS or an MMS")
    post.add_argument(
        "--sandbox", default="http://127.0.0.1:8090", help="the sandbox's URL (default: local)"
    )
    post.add_argument(
        "--gateway",
        default="http://127.0.0.1:8080/flowrouteinbound",
        help="the webhook URL to post to (default: the demo gateway's)",
    )
    post.add_argument(
        "--form",
        choices=("jsonapi", "compact"),
        default="jsonapi",
        help="Flowroute's body form (an MMS is always jsonapi)",
    )
    post.add_argument(
        "--to", default="12025550100", metavar="NUMBER", help="our number that receives it"
    )
    post.add_argument(
        "--from",
        dest="from_",
        default="12065550142",
        metavar="NUMBER",
        help="the sender's number",
    )
    post.add_argument("--body", default="Hello from the sandbox", metavar="TEXT", help="the text")
    post.add_argument(
        "--media",
        nargs="*",
        default=["photo.jpg"],
        metavar="FILE",
        help="files to attach (uploaded as they are); a name that is not a file gets "
        "invented content of its type",
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"smsbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"smsbridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
