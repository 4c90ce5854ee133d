"""The minimal reference receiver the gateway is compared with.

aiohttp, and for every request one persistent, mandatory publish on one confirming aio-pika
channel, answered 200 once the broker acks it. Nothing else: no validation, no dedupe, no
metrics, no logging. It publishes the raw body to the same exchange and routing key as the
gateway (so into the same quorum queue), which the benchmark declares beforehand.

    python -m bench.reference --listen 127.0.0.1:8081 --amqp amqp://guest:guest@127.0.0.1/vh
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aio_pika
from aiohttp import web
from pamqp.commands import Basic

from smsbridge import eventloop

_OK = b'{"status":"accepted"}'


async def serve(listen: str, amqp_url: str, exchange_name: str, routing_key: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(exchange_name, ensure=False)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        confirm = await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key,
            mandatory=True,
        )
        if not isinstance(confirm, Basic.Ack):
            return web.Response(status=503)
        return web.Response(body=_OK, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port), backlog=1024).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--exchange", default="smsbridge.internal")
    parser.add_argument("--routing-key", default="inbound")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(serve(args.listen, args.amqp, args.exchange, args.routing_key))


if __name__ == "__main__":
    main()
