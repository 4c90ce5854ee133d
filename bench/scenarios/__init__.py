"""The scenarios of issue 4, and what they share: the run context and component starters."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from bench import amqp
from bench import procs as p
from bench.stats import Table


@dataclass
class Context:
    quick: bool
    workdir: Path  # configurations and media (temporary)
    logdir: Path  # component logs, kept under bench/results/logs
    ledgers: tuple[str, ...] = ("off", "on")  # bench.pg.VARIANTS to run where the ledger matters
    tables: list[Table] = field(default_factory=list)
    memory: list[tuple[str, str, float | None]] = field(default_factory=list)

    def procs(self, run: str) -> p.Procs:
        return p.Procs(self.logdir / run)

    def config_path(self, run: str) -> Path:
        return self.workdir / run / "smsbridge.toml"

    def record_memory(self, scenario: str, procs: p.Procs) -> None:
        """Peak RSS of every live component of a run (read before it is stopped)."""
        for proc in procs.started:
            self.memory.append((scenario, proc.name, proc.peak_rss_mib()))


T = TypeVar("T")


async def retried(
    ctx: Context, label: str, attempt: Callable[[], Awaitable[T]], attempts: int = 3
) -> T:
    """Run again (up to ``attempts`` in all) when a run fails or the broker went away during
    it: another test on this machine stops and starts RabbitMQ now and then, and a run that
    straddles that measures nothing. What a failed attempt recorded (memory, tables) is
    dropped."""
    for n in range(1, attempts + 1):
        before = amqp.reconnects()
        memory, tables = len(ctx.memory), len(ctx.tables)
        try:
            result = await attempt()
        except Exception as exc:
            if n == attempts:
                raise
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if amqp.reconnects() == before or n == attempts:
                return result
            reason = "the broker restarted meanwhile"
        print(f"    {label}: {reason}; running it again", file=sys.stderr)
        del ctx.memory[memory:]
        del ctx.tables[tables:]
        await p.wait_broker()
    raise AssertionError("unreachable")


def nonce() -> str:
    return uuid.uuid4().hex[:8]


async def start_gateway(procs: p.Procs, config: Path, port: int) -> p.Proc:
    proc = await procs.start("gateway", p.smsbridge_argv(config, "gateway"))
    await p.wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


async def start_worker(procs: p.Procs, config: Path, kind: str) -> p.Proc:
    return await procs.start(kind, p.smsbridge_argv(config, "worker", kind))


async def start_sandbox(
    procs: p.Procs, accounts: list[p.Provider], latency_ms: float
) -> tuple[p.Proc, str]:
    """A sandbox process with ``accounts`` and ``latency_ms`` added to every send; returns
    (process, base URL)."""
    port = free = p.free_port()
    first = accounts[0]
    proc = await procs.start(
        "sandbox",
        p.smsbridge_argv(
            None,
            "sandbox",
            "--listen",
            f"127.0.0.1:{free}",
            "--access-key",
            first.access_key,
            "--secret-key",
            first.secret_key,
            "--sms-per-second",
            str(int(first.sms_per_second)),
        ),
    )
    base = f"http://127.0.0.1:{port}"
    await p.wait_http(f"{base}/_sandbox/stats", proc)
    specs = [
        {
            "access_key": a.access_key,
            "secret_key": a.secret_key,
            "sms_per_second": int(a.sms_per_second),
            "mms_per_second": 1,
        }
        for a in accounts
    ]
    await sandbox_call(base, "POST", "/_sandbox/config", {"accounts": specs})
    if latency_ms > 0:
        await sandbox_call(base, "POST", "/_sandbox/faults", {"latency_ms": latency_ms})
    return proc, base


async def sandbox_call(base: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, json=body) as resp,
    ):
        data = await resp.json(content_type=None)
        if resp.status >= 300:
            raise RuntimeError(f"sandbox {method} {path}: {resp.status} {data}")
        return data


async def run_loadgen(
    url: str, rate: float, seconds: float, prefix: str, drain: float = 60.0
) -> dict[str, Any]:
    out = await p.run_tool(
        p.python_argv(
            "bench.loadgen",
            "--url",
            url,
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
            "--id-prefix",
            prefix,
            "--drain",
            str(drain),
        ),
        timeout=seconds + drain + 60,
    )
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return result
