"""The default path's floor: what a default ``shipcast run`` does, with nothing
but aio-pika and aiohttp (and orjson to split a batch).

A parent binds the HTTP port once and starts ``PROCESSES`` processes that
share it, as ``shipcast run``'s supervisor does. Each process serves
``POST /v1/events`` (one event or an array): it publishes every event,
persistent and with publisher confirms, to a topic exchange under
``<partner_id>.<event_type>``, and answers 202 once all are confirmed. Each
also consumes the three quorum queues bound to every event, as the default
run binds the archive, the tracking channel and the webhook, with manual acks
and shipcast's prefetch for each: the archive's and the tracking queue's
messages are acked, the webhook queue's POSTed to the receiver, then acked.
No validation, no token, no signature, no store: the physical limit of this
machine for this job.

Run as a process: ``python -m tests.benchmarks.floor_default AMQP_URL RECEIVER_URL PORT PROCESSES``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import aio_pika
import aiohttp
import orjson
from aiohttp import web

from .floor import post_and_ack

EXCHANGE = "floor.events"
#: The queues bound to every event, with the prefetch shipcast's channel gives each.
QUEUES = {"floor.archive": 500, "floor.tracking": 256, "floor.webhook": 512}
WEBHOOK = "floor.webhook"


async def declare(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        for name in QUEUES:
            queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            await queue.bind(exchange, "#")


async def serve(fd: int, amqp_url: str, receiver_url: str) -> None:
    """One process: the ingest endpoint on the inherited socket, and a consumer on each queue."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        publishing = await connection.channel(publisher_confirms=True)
        exchange = await publishing.get_exchange(EXCHANGE)

        async def ingest(request: web.Request) -> web.Response:
            data = orjson.loads(await request.read())
            items: list[dict[str, Any]] = data if isinstance(data, list) else [data]
            await asyncio.gather(*(
                exchange.publish(aio_pika.Message(orjson.dumps(item), message_id=item["event_id"],
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                                  content_type="application/json"),
                                 f"{item['partner_id']}.{item['event_type']}", timeout=30)
                for item in items))
            return web.json_response({"ids": [item["event_id"] for item in items]}, status=202)

        async def ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()

        post = post_and_ack(session, receiver_url)

        for name, prefetch in QUEUES.items():
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.get_queue(name)
            await queue.consume(post if name == WEBHOOK else ack)

        app = web.Application()
        app.router.add_post("/v1/events", ingest)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, socket.socket(fileno=fd)).start()
        print("ready", flush=True)
        try:
            await asyncio.Future()
        finally:
            await runner.cleanup()


def supervise(amqp_url: str, receiver_url: str, port: int, processes: int) -> None:
    """Declare the topology, bind the port, start the processes; stop them on SIGTERM."""
    asyncio.run(declare(amqp_url))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.set_inheritable(True)
    children = [subprocess.Popen([sys.executable, "-m", "tests.benchmarks.floor_default", "--child",
                                  json.dumps([sock.fileno(), amqp_url, receiver_url])], pass_fds=[sock.fileno()])
                for _ in range(processes)]

    def stop(signum: int, frame: object) -> None:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(30)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while all(child.poll() is None for child in children):
        time.sleep(0.5)
    stop(signal.SIGTERM, None)  # one died: the run is over


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        import uvloop

        fd, amqp, receiver = json.loads(sys.argv[2])
        uvloop.run(serve(fd, amqp, receiver))
    else:
        supervise(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
