"""``python -m bench [--quick] [--only NAME[,NAME...]]``: run the benchmarks of issue 4.

Prints Markdown tables (the machine first) and writes them to bench/results/latest.md.
Component logs of the last run are kept in bench/results/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import pg
from bench import procs as p
from bench.scenarios import Context, e2e, history, ingest, outbound
from bench.stats import Table
from smsbridge import eventloop

Scenario = Callable[[Context], Awaitable[None]]

SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "ingest": (ingest.run, "gateway vs reference receiver: max throughput and 1,000 req/s"),
    "e2e": (e2e.latency, "webhook -> PBX queue latency at 250, 500, 1,000 and 2,000 msg/s"),
    "resolver": (e2e.resolver, "resolver messages/s of one process"),
    "outbound-throughput": (outbound.throughput, "one outbound worker, limits lifted"),
    "outbound-accounts": (outbound.accounts, "200 accounts at 5 SMS/s each"),
    "outbound-isolation": (outbound.isolation, "account B's latency behind A's backlog"),
    "history": (history.run, "the console's list and search with 1,000,000 messages"),
}
GROUPS = {
    "end-to-end": ["e2e", "resolver"],
    "outbound": ["outbound-throughput", "outbound-accounts", "outbound-isolation"],
}


def selected(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    names: list[str] = []
    for raw in only.split(","):
        name = raw.strip()
        expanded = GROUPS.get(name, [name])
        for item in expanded:
            if item not in SCENARIOS:
                choices = ", ".join([*SCENARIOS, *GROUPS])
                raise SystemExit(f"unknown scenario {item!r}; choose from: {choices}")
            if item not in names:
                names.append(item)
    return names


def ledger_variants(raw: str) -> tuple[str, ...]:
    variants = tuple(v.strip() for v in raw.split(",") if v.strip())
    if not variants or any(v not in pg.VARIANTS for v in variants):
        raise SystemExit(f"--ledger takes {', '.join(pg.VARIANTS)} (comma-separated), got {raw!r}")
    return variants


def machine_table() -> Table:
    table = Table("Machine", ["", ""])
    for key, value in p.machine_info():
        table.add(key, value)
    return table


def memory_table(ctx: Context) -> Table:
    table = Table(
        "Memory: peak RSS (VmHWM) of each component process at the end of its scenario",
        ["scenario", "process", "VmHWM MiB"],
    )
    for scenario, name, mib in ctx.memory:
        table.add(scenario, name, mib)
    if any(name == "sandbox" for _, name, _ in ctx.memory):
        table.notes.append(
            "the sandbox keeps every accepted message in memory (records for the tests), so its "
            "peak grows with the number of sends"
        )
    return table


def render(
    header: list[str], machine: Table, ctx: Context, failures: list[str], footer: str = ""
) -> str:
    parts = ["\n".join(header) + "\n", machine.markdown()]
    parts += [t.markdown() for t in ctx.tables]
    if ctx.memory:
        parts.append(memory_table(ctx).markdown())
    if failures:
        parts.append("### Failures\n\n" + "\n".join(f"- {f}" for f in failures) + "\n")
    if footer:
        parts.append(footer + "\n")
    return "\n".join(parts)


async def main_async(args: argparse.Namespace) -> int:
    names = selected(args.only)
    if "ingest" in names and shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (./dev bench does it)", file=sys.stderr)
        return 2
    await p.wait_broker()
    logdir = p.RESULTS / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    header = [
        "## smsbridge benchmarks",
        "",
        f"`{shlex.join(['python', '-m', 'bench', *sys.argv[1:]])}`"
        + f" at {datetime.now(UTC).isoformat(timespec='seconds')}"
        + (" (quick: a few seconds per scenario, smoke check only)" if args.quick else ""),
        "",
        "Every component runs as its own process on this machine, against a fresh vhost on the "
        "local RabbitMQ; loopback only. Compare ratios within a run, not absolute numbers "
        "across machines.",
    ]
    machine = await asyncio.to_thread(machine_table)
    print("\n".join(header) + "\n\n" + machine.markdown(), flush=True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="smsbridge-bench-") as tmp:
        ctx = Context(
            quick=args.quick, workdir=Path(tmp), logdir=logdir, ledgers=ledger_variants(args.ledger)
        )
        for name in names:
            scenario, description = SCENARIOS[name]
            print(f"==> {name}: {description}", file=sys.stderr, flush=True)
            before = len(ctx.tables)
            t0 = time.monotonic()
            try:
                await scenario(ctx)
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:500]}")
                print(f"==> {name} FAILED: {exc}", file=sys.stderr, flush=True)
            print(f"==> {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            for table in ctx.tables[before:]:
                print(table.markdown(), flush=True)
            output.write_text(render(header, machine, ctx, failures))
        if ctx.memory:
            print(memory_table(ctx).markdown(), flush=True)
        elapsed = time.monotonic() - started
        footer = f"Total time: {elapsed:.0f} s."
        output.write_text(render(header, machine, ctx, failures, footer))
    if failures:
        print("Failures:\n" + "\n".join(failures), file=sys.stderr)
    print(f"written to {output} (total {elapsed:.0f} s)", file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    parser.add_argument(
        "--only",
        metavar="NAME",
        help="comma-separated: " + ", ".join([*SCENARIOS, *GROUPS]),
    )
    parser.add_argument(
        "--ledger",
        default=",".join(pg.VARIANTS),
        help="where the ledger matters (e2e, resolver, outbound-throughput), run without (off) "
        "and/or with (on) it; default: off,on",
    )
    parser.add_argument("--output", default=str(p.RESULTS / "latest.md"))
    args = parser.parse_args()

    async def runner() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            for sig in (signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, task.cancel)
        return await main_async(args)

    try:
        return eventloop.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        p.kill_leftovers()


if __name__ == "__main__":
    sys.exit(main())
