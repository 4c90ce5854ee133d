"""Scenario 2, end to end: webhook POST -> InboundMessage on a PBX queue, and the resolver alone.

Latency: gateway and resolver as separate processes; the open-loop generator posts at a fixed
rate and writes the scheduled send time into the message text; a PBX-like quorum queue bound
to ``inbound.#`` records arrivals. Latency = arrival - scheduled send. Fresh vhost and fresh
processes for every rate.

Resolver: N envelopes are published straight to ``smsbridge.inbound`` (as the gateway does,
with ``smsbridge.envelope.wrap``), then one resolver process starts; its rate is measured
between the first and the last InboundMessage.
"""

from __future__ import annotations

import functools
import math
import time
from datetime import datetime
from typing import Any

from bench import amqp, pg
from bench import procs as p
from bench.loadgen import webhook
from bench.scenarios import Context, nonce, retried, run_loadgen, start_gateway, start_worker
from bench.stats import Table, summary_ms
from smsbridge import envelope, topology

RATES = (250.0, 500.0, 1000.0, 2000.0)  # 250: below saturation on a 2-core machine, for context


async def latency_run(ctx: Context, rate: float, ledger: str) -> dict[str, Any]:
    seconds = 5.0 if ctx.quick else 60.0
    run = f"e2e-{int(rate)}-ledger-{ledger}"
    prefix = f"e2e{int(rate)}-{nonce()}"
    async with (
        p.fresh_vhost("e2e") as url,
        pg.ledger_for(ledger, "e2e") as ledger_url,
        ctx.procs(run) as procs,
        amqp.connection(url) as conn,
    ):
        await amqp.declare_topology(conn)
        collector = amqp.Collector()
        await collector.start(conn, ["inbound.#"])
        port = p.free_port()
        config = p.bridge_config(
            ctx.config_path(run), url, gateway_port=port, ledger_url=ledger_url
        )
        await start_gateway(procs, config, port)
        await start_worker(procs, config, "resolver")
        await amqp.wait_consumers(conn, topology.INBOUND_QUEUE)

        pg_cpu0 = pg.postgres_cpu()
        gen = await run_loadgen(
            f"http://127.0.0.1:{port}/flowrouteinbound", rate, seconds, prefix, drain=90
        )
        measured = prefix + "-"
        warm = prefix + "-warm-"

        def ours(a: amqp.Arrival) -> bool:
            mid = str(a.body.get("id", ""))
            return mid.startswith(measured) and not mid.startswith(warm)

        complete = await collector.wait_for(gen["ok"], where=ours, stall=15.0)
        pg_cpu = pg.postgres_cpu_seconds(pg_cpu0)
        procs.check()
        ctx.record_memory(f"e2e {int(rate)}/s ledger {ledger}", procs)

    due: list[float] = []
    sent: list[float] = []
    after_gateway: list[float] = []
    ids: set[str] = set()
    duplicates = 0
    for a in collector.arrivals:
        if not ours(a):
            continue
        mid = str(a.body["id"])
        if mid in ids:
            duplicates += 1
            continue
        ids.add(mid)
        fields = dict(part.split("=", 1) for part in str(a.body["body"]).split())
        due.append(a.at - float(fields["t"]))
        sent.append(a.at - float(fields["a"]))
        received = datetime.fromisoformat(str(a.body["received_at"]).replace("Z", "+00:00"))
        after_gateway.append(a.at - received.timestamp())
    return {
        "rate": rate,
        "ledger": ledger,
        "pg_cpu_ms": pg_cpu * 1000 / max(len(ids), 1) if ledger == "on" else None,
        "seconds": seconds,
        "gen": gen,
        "arrived": len(ids),
        "duplicates": duplicates,
        "complete": complete and len(ids) == gen["planned"],
        "due_ms": summary_ms(due),
        "sent_ms": summary_ms(sent),
        "after_gateway_ms": summary_ms(after_gateway),
    }


async def resolver_run(ctx: Context, ledger: str) -> dict[str, Any]:
    n = 3000 if ctx.quick else 30000
    run = f"resolver-ledger-{ledger}"
    tag = nonce()
    async with (
        p.fresh_vhost("resolver") as url,
        pg.ledger_for(ledger, "resolver") as ledger_url,
        ctx.procs(run) as procs,
        amqp.connection(url) as conn,
    ):
        await amqp.declare_topology(conn)
        collector = amqp.Collector()
        await collector.start(conn, ["inbound.#"])
        received_at = envelope.now_rfc3339()

        def envelopes() -> Any:
            for i in range(n):
                mid = f"res-{tag}-{i}"
                body = envelope.wrap(
                    webhook(mid, "resolver bench"), "flowrouteinbound", received_at
                )
                yield amqp.json_message(body, mid, envelope.TYPE)

        await amqp.publish_many(conn, topology.INTERNAL, topology.INBOUND_KEY, envelopes())
        config = p.bridge_config(
            ctx.config_path(run), url, gateway_port=p.free_port(), ledger_url=ledger_url
        )
        pg_cpu0 = pg.postgres_cpu()
        started = time.time()
        resolver = await start_worker(procs, config, "resolver")
        complete = await collector.wait_for(n, stall=15.0)
        pg_cpu = pg.postgres_cpu_seconds(pg_cpu0)
        procs.check()
        cpu = resolver.cpu_seconds()
        ctx.record_memory(f"resolver ledger {ledger}", procs)
    times = sorted(a.at for a in collector.arrivals)
    span = times[-1] - times[0] if len(times) > 1 else math.nan
    return {
        "n": n,
        "ledger": ledger,
        "pg_cpu_ms": pg_cpu * 1000 / n if ledger == "on" else None,
        "duplicates": len(collector.arrivals)
        - len({str(a.body["id"]) for a in collector.arrivals}),
        "arrived": len(times),
        "complete": complete,
        "rate": (len(times) - 1) / span if span and span > 0 else math.nan,
        "from_start": (times[-1] - started) if times else math.nan,
        "first_after": (times[0] - started) if times else math.nan,
        "cpu_ms": cpu * 1000 / n,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


async def latency(ctx: Context) -> None:
    results = [
        await retried(
            ctx,
            f"e2e {rate:.0f}/s ledger {ledger}",
            functools.partial(latency_run, ctx, rate, ledger),
        )
        for rate in RATES
        for ledger in ctx.ledgers
    ]
    seconds = results[0]["seconds"]
    table = Table(
        f"End to end, webhook POST -> InboundMessage on a PBX queue ({seconds:.0f} s per rate, "
        "gateway and resolver as separate processes), without and with the ledger",
        [
            "offered msg/s",
            "ledger",
            "achieved req/s",
            "arrived / offered",
            "all arrived",
            "duplicates",
            "p50 ms",
            "p99 ms",
            "max ms",
            "p99 ms from actual send",
            "p99 ms gateway accept -> PBX",
            "webhook answer p99 ms",
            "generator lag p99 ms",
            "PostgreSQL CPU ms/msg",
        ],
    )
    for r in results:
        gen = r["gen"]
        label = f"{int(r['rate'])}/s ledger {r['ledger']}"
        table.add(
            int(r["rate"]),
            r["ledger"],
            gen["achieved"],
            f"{r['arrived']:,} / {gen['planned']:,}",
            "yes" if r["complete"] else "NO",
            r["duplicates"],
            r["due_ms"]["p50"],
            r["due_ms"]["p99"],
            r["due_ms"]["max"],
            r["sent_ms"]["p99"],
            r["after_gateway_ms"]["p99"],
            gen["latency_ms"]["p99"],
            gen["lag_ms"]["p99"],
            _ms(r["pg_cpu_ms"]),
        )
        if gen["overloaded"]:
            table.notes.append(
                f"{label}: overloaded, the generator stopped offering after "
                f"{gen['sent']:,} requests ({gen['sent'] / r['rate']:.0f} s; 10,000 unanswered)"
            )
        if gen["sent"] != gen["ok"]:
            table.notes.append(
                f"{label}: {gen['sent'] - gen['ok']} webhooks not answered 200 "
                f"(statuses {gen['statuses']}, errors {gen['errors']})"
            )
    for r in results:
        if r["rate"] != 1000.0:
            continue
        p99 = r["due_ms"]["p99"]
        verdict = "met" if p99 < 100 and r["complete"] and not r["duplicates"] else "NOT met"
        table.notes.append(
            f"target 1,000 msg/s sustained for {seconds:.0f} s with p99 < 100 ms, ledger "
            f"{r['ledger']}: {verdict} ({p99:.1f} ms)"
        )
    table.notes.append(
        "latency = arrival at the PBX consumer - scheduled send time (open loop); the PBX queue "
        "is a durable quorum queue (as in the README) consumed with auto-ack; with the ledger the "
        "resolver records each message (batched) before it publishes the InboundMessage"
    )
    ctx.tables.append(table)


async def resolver(ctx: Context) -> None:
    results = [
        await retried(
            ctx, f"resolver ledger {ledger}", functools.partial(resolver_run, ctx, ledger)
        )
        for ledger in ctx.ledgers
    ]
    rtable = Table(
        "Resolver, messages/s of one process (pre-filled smsbridge.inbound), without and with "
        "the ledger",
        [
            "ledger",
            "envelopes",
            "arrived",
            "duplicates",
            "msg/s (first -> last)",
            "first after start s",
            "all done after s",
            "resolver CPU ms/msg",
            "PostgreSQL CPU ms/msg",
        ],
    )
    for res in results:
        rtable.add(
            res["ledger"],
            res["n"],
            res["arrived"],
            res["duplicates"],
            res["rate"],
            res["first_after"],
            res["from_start"],
            f"{res['cpu_ms']:.2f}",
            _ms(res["pg_cpu_ms"]),
        )
        verdict = "met" if res["rate"] >= 1500 and res["complete"] else "NOT met"
        rtable.notes.append(
            f"target >= 1,500 msg/s per process, ledger {res['ledger']}: {verdict} "
            f"({res['rate']:,.0f}/s)"
        )
    rtable.notes.append(
        "default prefetch (200); each InboundMessage is a confirmed publish to a quorum queue; "
        "CPU includes the process's start-up"
    )
    ctx.tables.append(rtable)
