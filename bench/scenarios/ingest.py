"""Scenario 1, ingest: the gateway against a minimal reference receiver, same run, same load.

Max throughput: wrk (``bench/webhook.lua``, unique ids) with 1 thread and 64 connections.
Fixed rate: the open-loop generator at 1,000 req/s. Each target runs in a fresh vhost, as its
own process; the inbound queue is purged between the runs so its growth does not skew them.
Full runs alternate the order (reference, gateway, gateway, reference) against drift.
"""

from __future__ import annotations

import functools
import math
import shutil
import statistics
from typing import Any

import orjson

from bench import amqp
from bench import procs as p
from bench.scenarios import Context, nonce, retried, run_loadgen, start_gateway
from bench.stats import Table
from smsbridge import eventloop, topology

WRK_THREADS = 1
WRK_CONNECTIONS = 64
FIXED_RATE = 1000.0


async def wrk(url: str, seconds: int) -> dict[str, Any]:
    wrk_bin = shutil.which("wrk")
    if wrk_bin is None:
        raise RuntimeError("wrk is not installed (./dev bench installs it: apt-get install wrk)")
    out = await p.run_tool(
        [
            wrk_bin,
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(p.ROOT / "bench" / "webhook.lua"),
            url,
        ],
        timeout=seconds + 60,
        env={"BENCH_RUN": nonce()},
    )
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            data: dict[str, Any] = orjson.loads(line.removeprefix("BENCH_JSON "))
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            data["errors"] = sum(
                data[k] for k in ("status_errors", "connect", "read", "write", "timeout")
            )
            return data
    raise RuntimeError(f"no BENCH_JSON line in wrk output:\n{out}")


async def one_target(ctx: Context, target: str, index: int) -> dict[str, Any]:
    warm, measure = (1, 3) if ctx.quick else (2, 10)
    fixed_seconds = 4.0 if ctx.quick else 15.0
    run = f"ingest-{index}-{target}"
    async with (
        p.fresh_vhost("ingest") as url,
        ctx.procs(run) as procs,
        amqp.connection(url) as conn,
    ):
        await amqp.declare_topology(conn)
        if target == "broker":  # the floor: the generator publishes itself, no HTTP
            fixed = await run_loadgen(url, FIXED_RATE, fixed_seconds, f"ingest-{nonce()}")
            return {"target": target, "wrk": None, "fixed": fixed}
        port = p.free_port()
        if target == "gateway":
            config = p.bridge_config(ctx.config_path(run), url, gateway_port=port)
            proc = await start_gateway(procs, config, port)
        else:
            proc = await procs.start(
                "reference",
                p.python_argv("bench.reference", "--listen", f"127.0.0.1:{port}", "--amqp", url),
            )
            await p.wait_port(port, proc)
        target_url = f"http://127.0.0.1:{port}/flowrouteinbound"
        await wrk(target_url, warm)
        await amqp.purge(conn, topology.INBOUND_QUEUE)
        cpu = proc.cpu_seconds()
        max_run = await wrk(target_url, measure)
        max_run["cpu_ms"] = (proc.cpu_seconds() - cpu) * 1000 / max(max_run["requests"], 1)
        await amqp.purge(conn, topology.INBOUND_QUEUE)
        fixed = await run_loadgen(target_url, FIXED_RATE, fixed_seconds, f"ingest-{nonce()}")
        procs.check()
        ctx.record_memory("ingest", procs)
        return {"target": target, "wrk": max_run, "fixed": fixed}


async def run(ctx: Context) -> None:
    # Full runs go A-B-B-A against drift; "broker" is the floor for the fixed-rate table.
    rounds = ["reference", "gateway"] + ([] if ctx.quick else ["gateway", "reference"])
    order = ["broker", *rounds]
    results = [
        await retried(ctx, f"ingest {target}", functools.partial(one_target, ctx, target, i))
        for i, target in enumerate(order)
    ]

    table = Table(
        f"Ingest, max throughput (wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, "
        f"{'3' if ctx.quick else '10'} s per run)",
        [
            "target",
            "run",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors/non-2xx",
            "server CPU ms/request",
        ],
    )
    best: dict[str, float] = {}
    for i, r in enumerate(results):
        w = r["wrk"]
        if w is None:
            continue
        best[r["target"]] = max(best.get(r["target"], 0.0), w["rps"])
        table.add(
            r["target"],
            i + 1,
            w["rps"],
            w["p50"] / 1000,
            w["p90"] / 1000,
            w["p99"] / 1000,
            w["max"] / 1000,
            w["errors"],
            f"{w['cpu_ms']:.3f}",
        )
    ratio = best.get("gateway", math.nan) / best.get("reference", math.nan)
    cpu: dict[str, list[float]] = {}
    for r in results:
        if r["wrk"] is not None:
            cpu.setdefault(r["target"], []).append(r["wrk"]["cpu_ms"])
    cpu_ratio = statistics.mean(cpu.get("gateway", [math.nan])) / statistics.mean(
        cpu.get("reference", [math.nan])
    )
    table.add(
        "**gateway / reference**",
        "best",
        f"**{ratio:.2f}x**",
        "",
        "",
        "",
        "",
        "",
        f"{cpu_ratio:.2f}x (mean)",
    )
    verdict = "met" if ratio >= 0.9 else "NOT met"
    table.notes.append(f"target >= 0.90x the reference's throughput: {verdict} ({ratio:.2f}x)")
    table.notes.append(
        f"event loop: {eventloop.name()} for both the gateway and the reference (smsbridge/"
        "eventloop.py; SMSBRIDGE_EVENT_LOOP=asyncio for asyncio's own); the gateway does not "
        "use the ledger (it only publishes), so ingest is the same with and without it"
    )
    table.notes.append(
        "server CPU ms/request = the receiver process's user+system CPU during the run / "
        "requests: less sensitive than req/s to what else the machine is doing"
    )
    table.notes.append(
        "reference = bench/reference.py: aiohttp + one confirmed, persistent, mandatory publish "
        "per request on one channel, into the same quorum queue as the gateway"
    )
    ctx.tables.append(table)

    fixed = Table(
        f"Ingest, fixed rate {FIXED_RATE:,.0f} req/s offered (open loop, "
        f"{'4' if ctx.quick else '15'} s, latency from the scheduled send time)",
        [
            "target",
            "run",
            "achieved req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "non-200",
            "generator lag p99 ms",
        ],
    )
    worst_gateway_p99 = 0.0
    for i, r in enumerate(results):
        f = r["fixed"]
        lat = f["latency_ms"]
        bad = f["sent"] - f["ok"]
        if r["target"] == "gateway":
            worst_gateway_p99 = max(worst_gateway_p99, lat["p99"])
        fixed.add(
            r["target"],
            i + 1,
            f["achieved"],
            lat["p50"],
            lat["p90"],
            lat["p99"],
            lat["max"],
            bad,
            f["lag_ms"]["p99"],
        )
    verdict = "met" if worst_gateway_p99 < 25 else "NOT met"
    fixed.notes.append(
        f"target gateway p99 < 25 ms at 1,000 req/s: {verdict} "
        f"(worst run {worst_gateway_p99:.1f} ms)"
    )
    fixed.notes.append(
        "broker = no HTTP server: the generator itself publishes each body (persistent, "
        "mandatory, confirmed) to the gateway's exchange and quorum queue; the floor both "
        "receivers stand on"
    )
    fixed.notes.append(
        "generator: bench/loadgen.py (minimal asyncio HTTP/1.1 client, 256 keep-alive "
        "connections), a separate process on the same machine; its lag is included"
    )
    ctx.tables.append(fixed)
