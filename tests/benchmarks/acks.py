"""Acks in batches (scenario ``acks``): a consumer that handles each
delivery in a task of its own, as a channel worker does, settling each with
``message.ack()`` (the baseline: a frame per delivery) or through
``shipcast.amqp.acks`` (a multiple ack for those settled together). Twice:
with work that ends at once, in order, and with work of 0 to 20 ms each (as
webhook answers vary), ending out of order. The figures are the consumer's
CPU and RabbitMQ's per message, the messages a second, and the ack frames
written per message; the two ways take turns over the rounds (which goes
first alternates), and each figure is the mean of its rounds. The queue is a quorum queue, as shipcast's
are: there each ack frame is a settle command in the queue's log.

    python -m tests.benchmarks.run acks [--quick]
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from .common import Vhost, broker_cpu, mean

PREFETCH = 256


async def consume_all(url: str, count: int, batched: bool, work: float) -> tuple[float, float, float, int]:
    """Publish ``count`` messages, then consume and ack them all, each after
    up to ``work`` seconds (the same random spread for both ways): this
    process's CPU seconds, RabbitMQ's, the seconds it took, and the ack
    frames written (counted only when batched: one per message otherwise)."""
    from shipcast.amqp.acks import Acks

    connection = await aio_pika.connect(url)
    try:
        publishing = await connection.channel()
        queue = await publishing.declare_queue("acks", durable=True, arguments={"x-queue-type": "quorum"})
        body = b"x" * 1000  # an event's size
        for start in range(0, count, 500):
            await asyncio.gather(*(publishing.default_exchange.publish(aio_pika.Message(body), "acks")
                                   for _ in range(start, min(count, start + 500))))
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        consuming = await channel.declare_queue("acks", durable=True, arguments={"x-queue-type": "quorum"})
        wire = await channel.get_underlay_channel()
        writes, frames = wire.basic_ack, [0 if batched else count]

        async def counted(delivery_tag: int, multiple: bool = False, **options: object) -> None:
            frames[0] += 1
            await writes(delivery_tag, multiple=multiple, **options)  # type: ignore[arg-type]

        if batched:  # the count costs a little: the batched way pays it, not the baseline
            wire.basic_ack = counted  # type: ignore[method-assign]
        spread = random.Random(7)
        delays = [spread.uniform(0, work) for _ in range(count)]
        acks, done, settled = Acks(), asyncio.Event(), [0]
        tasks: set[asyncio.Task[None]] = set()

        async def handle(message: AbstractIncomingMessage, delay: float) -> None:
            await asyncio.sleep(delay)  # the work, ending in its own time
            await (acks.ack(message) if batched else message.ack())
            settled[0] += 1
            if settled[0] == count:
                done.set()

        async def deliver(message: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(handle(message, delays[(int(message.delivery_tag or 1) - 1) % count]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        cpu, broker, started = time.process_time(), broker_cpu(), time.perf_counter()
        await consuming.consume(deliver)
        await asyncio.wait_for(done.wait(), 600)
        used = time.process_time() - cpu, broker_cpu() - broker, time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        return used[0], used[1], used[2], frames[0]
    finally:
        await connection.close()


async def acks(tmp: Path, quick: bool) -> None:
    from .run import report

    count, rounds = (5_000, 2) if quick else (20_000, 4)
    for work, kind in ((0.0, "in order"), (0.02, "0-20 ms work, out of order")):
        found: dict[bool, list[tuple[float, float, float, int]]] = {False: [], True: []}
        for round_ in range(rounds):
            for batched in (False, True) if round_ % 2 == 0 else (True, False):
                with Vhost() as vhost:
                    found[batched].append(await consume_all(vhost.amqp_url, count, batched, work))
        figures = {batched: (mean([r[0] for r in runs]) / count * 1e6, mean([r[1] for r in runs]) / count * 1e6,
                             count / mean([r[2] for r in runs]), mean([r[3] for r in runs]) / count * 100)
                   for batched, runs in found.items()}
        alone, together = figures[False], figures[True]
        report(f"acks, {kind}: consumer CPU per message, a frame each", alone[0], "µs")
        report(f"acks, {kind}: consumer CPU per message, batched", together[0], "µs", alone[0], "of a frame each")
        report(f"acks, {kind}: RabbitMQ CPU per message, a frame each", alone[1], "µs")
        report(f"acks, {kind}: RabbitMQ CPU per message, batched", together[1], "µs", alone[1], "of a frame each")
        report(f"acks, {kind}: messages a second, a frame each", alone[2], "msg/s")
        report(f"acks, {kind}: messages a second, batched", together[2], "msg/s", alone[2], "of a frame each")
        report(f"acks, {kind}: ack frames per 100 messages, batched", together[3], "", alone[3], "of a frame each")
