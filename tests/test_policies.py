"""What operators tune lives in policies, not in queue arguments: shipcast
creates its policies where missing and keeps an operator's tuning; a delivery
limit raised past the old hard-coded 20 takes effect; queues an earlier
shipcast declared with those arguments keep working, are flagged, and
`shipcast queues migrate` redeclares them keeping every message."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
import httpx
import pytest

from shipcast.amqp.headers import TARGET as TARGET_HEADER, event_message
from tests.bound import example
from tests.bound import channels
from shipcast.settings import Settings
from shipcast.amqp.topology import LEGACY_ARGUMENTS, POLICIES, policy_body

from .helpers import Receiver, Subprocess, applied, eventually, partners_doc, run_cli

pytestmark = pytest.mark.broker

TUNABLES = {"x-delivery-limit", "x-overflow", "x-dead-letter-strategy", "x-max-length"}


def _status(settings: Settings) -> dict[str, dict[str, Any]]:
    result = run_cli(settings, "status", "--json")
    assert result.returncode == 0, result.stderr
    return {row["queue"]: row for row in json.loads(result.stdout)}


def _problems(settings: Settings, queue: str) -> list[str]:
    return list(_status(settings).get(queue, {}).get("problems", []))


async def test_policies_carry_the_tunables_and_an_operators_tuning_is_kept(
        settings: Settings, receiver: Receiver, management: httpx.Client) -> None:
    vhost = settings.vhost
    # The operator tuned the work queues' delivery limit past the 20 shipcast once hard-coded,
    # and the retry tiers' policy is an earlier shipcast's, with a length of the operator's.
    tuned = policy_body("shipcast-work")
    tuned["definition"] = {**tuned["definition"], "delivery-limit": 30}
    management.put(f"/api/policies/{vhost}/shipcast-work", json=tuned).raise_for_status()
    management.put(f"/api/policies/{vhost}/shipcast-retry",
                   json={**policy_body("shipcast-retry"), "definition": {"max-length": 123}}).raise_for_status()
    async with applied(settings, partners_doc("acme", receiver.url)):
        shown = {p["name"]: p["definition"] for p in management.get(f"/api/policies/{vhost}").json()}
        expected = {name: definition for name, _, definition in POLICIES}
        assert shown == expected | {"shipcast-work": tuned["definition"],  # kept as tuned
                                    "shipcast-retry": {**expected["shipcast-retry"], "max-length": 123}}  # completed
        for queue in management.get(f"/api/queues/{vhost}").json():
            if queue["durable"]:
                assert not TUNABLES & set(queue["arguments"]), queue["name"]
        # No argument caps the policy: a message crashing its consumer 30 times is still
        # redelivered; the 31st return parks it.
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            channel = await connection.channel()
            work = await channel.declare_queue("shipcast.webhook", passive=True)
            await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id="poison"), work.name)
            deliveries = 0
            while (message := await work.get(fail=False, timeout=5)) is not None:
                deliveries += 1
                await message.nack(requeue=True)
                if deliveries > 100:
                    break
            assert deliveries == 31

            async def parked() -> int:
                return (await channel.declare_queue("shipcast.webhook.dead", passive=True)
                        ).declaration_result.message_count or 0

            assert await eventually(parked) == 1
        finally:
            await connection.close()
        # A missing policy is flagged in `shipcast status` (once the management API refreshes, every 5 s).
        management.delete(f"/api/policies/{vhost}/shipcast-dead").raise_for_status()
        await eventually(lambda: any("in its policy" in p for p in _problems(settings, "shipcast.webhook.dead")),
                         timeout=30)
        rows = _status(settings)
        assert "no max-length, overflow in its policy: the policy is missing, out of date or replaced " \
               "(`shipcast-dead`)" in rows["shipcast.webhook.dead"]["problems"]
        assert rows["shipcast.webhook"]["policy"] == "shipcast-work"
        assert not any("polic" in p for p in rows["shipcast.webhook"]["problems"])


async def _delivered_once(settings: Settings, receiver: Receiver, event_ids: list[str]) -> None:
    """A webhook worker, started now, delivers each of ``event_ids`` once: a
    second arrival only where the first attempt is logged as failed (it timed
    out on a loaded machine after the receiver had it: at-least-once)."""
    from collections import Counter

    from shipcast.security.links import identifiers
    from shipcast.store import Store

    worker = Subprocess(settings, "worker", "--channel", "webhook").start()
    try:
        await eventually(lambda: set(receiver.ids) >= set(event_ids), timeout=60)
    finally:
        await asyncio.to_thread(worker.stop)
    assert sorted(set(receiver.ids)) == sorted(event_ids)
    again = [event_id for event_id, count in Counter(receiver.ids).items() if count > 1]
    if again:
        store = await Store(settings.database_url, identifiers(settings)).open()
        try:
            for event_id in again:
                outcomes = [row["outcome"] for row in await store.list_attempts(event_id)]
                assert "retry" in outcomes, (event_id, outcomes)
        finally:
            await store.close()


async def _declare_as_before(settings: Settings) -> None:
    """The webhook channel's queues as an earlier shipcast declared them."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        for spec in channels()["webhook"].topology(settings.retry_delays).queues:
            await channel.declare_queue(spec.name, durable=True, arguments=spec.legacy_arguments)
    finally:
        await connection.close()


async def test_queues_declared_by_an_earlier_shipcast_keep_working_and_migrate_keeping_every_message(
        settings: Settings, receiver: Receiver, management: httpx.Client) -> None:
    vhost = settings.vhost
    await _declare_as_before(settings)
    queue_url = f"/api/queues/{vhost}/shipcast.webhook"
    assert set(LEGACY_ARGUMENTS["work"]) <= set(management.get(queue_url).json()["arguments"])
    async with applied(settings, partners_doc("acme", receiver.url)) as services:  # no TopologyMismatch
        bindings = {b["routing_key"] for b in management.get(f"{queue_url}/bindings").json() if b["source"]}
        assert bindings, "the partner's bindings"
        published = await services.publisher.publish(*(example("OFD", partner_id="acme") for _ in range(20)))
        flagged = ("declared with x-dead-letter-strategy, x-delivery-limit, x-overflow, which override its policy: "
                   "`shipcast queues migrate`")
        await eventually(lambda: flagged in _problems(settings, "shipcast.webhook"), timeout=30)

        # A consumer on the queue (a worker still running): refused, naming what to stop.
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1)
            work = await channel.declare_queue("shipcast.webhook", passive=True)

            async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                """Never settles: the consumer holds one message unacked."""

            await work.consume(hold)
            refused = await asyncio.to_thread(run_cli, settings, "queues", "migrate")
        finally:
            await connection.close()  # its unacked message goes back
        assert refused.returncode == 1
        assert "shipcast.webhook has 1 consumer(s): stop the workers of channel 'webhook'" in refused.stderr

        # Deliveries waiting in a retry tier (2 s) as the migration starts: they expire into the
        # work queue while it is sealed or replaced, and must not be lost.
        retrying = [example("FAIL", partner_id="acme") for _ in range(5)]
        for event in retrying:
            await services.broker.publish(event_message(event, headers={TARGET_HEADER: "main"}),
                                          "shipcast.webhook.retry.2", exchange="")
        published += [event.event_id for event in retrying]
        # Migrated while the OMS keeps publishing: those events wait in the holding queue.
        migration = asyncio.create_task(asyncio.to_thread(run_cli, settings, "queues", "migrate"))
        while not migration.done():
            published += await services.publisher.publish(example("DEL", partner_id="acme"))
            await asyncio.sleep(0.01)
        result = migration.result()
        assert result.returncode == 0, result.stderr
        assert "shipcast.webhook: " in result.stdout and \
            "declared without x-dead-letter-strategy, x-delivery-limit, x-overflow" in result.stdout
        assert "shipcast.webhook.retry.1: 0 messages kept; declared without x-dead-letter-strategy, x-overflow" \
            in result.stdout
        assert "3 queues migrated" in result.stdout
        assert not TUNABLES & set(management.get(queue_url).json()["arguments"])
        assert {b["routing_key"] for b in management.get(f"{queue_url}/bindings").json() if b["source"]} == bindings
        assert not [q["name"] for q in management.get(f"/api/queues/{vhost}").json() if "migrating" in q["name"]]
        assert "nothing to migrate" in run_cli(settings, "queues", "migrate").stdout

        # One message per event in the work queue once the retry tier has expired into it: none
        # lost, none copied twice (a worker's delivery log would hide a second copy).
        async def one_each() -> bool:
            connection = await aio_pika.connect(settings.amqp_url)
            try:
                queue = await (await connection.channel()).declare_queue("shipcast.webhook", passive=True)
                return queue.declaration_result.message_count == len(published)
            finally:
                await connection.close()

        await eventually(one_each, timeout=30)
        # Every event, from before and during the migration, is delivered once.
        await _delivered_once(settings, receiver, published)


async def test_a_migration_stopped_half_way_finishes_when_run_again(
        settings: Settings, receiver: Receiver, management: httpx.Client) -> None:
    """Stopped after the old queue was deleted: the events wait in the holding
    queue, which holds the bindings, and the old queue's seal is still set."""
    vhost = settings.vhost
    queue_url = f"/api/queues/{vhost}/shipcast.webhook"
    async with applied(settings, partners_doc("acme", receiver.url)) as services:
        bindings = {b["routing_key"] for b in management.get(f"{queue_url}/bindings").json() if b["source"]}
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            channel = await connection.channel()
            exchange = await channel.get_exchange("shipcast.events")
            holding = await channel.declare_queue("shipcast.webhook.migrating", durable=True,
                                                  arguments={"x-queue-type": "quorum"})
            for key in bindings:
                await holding.bind(exchange, key)
            await channel.queue_delete("shipcast.webhook")
        finally:
            await connection.close()
        management.put(f"/api/policies/{vhost}/shipcast-migrating-shipcast.webhook", json={
            "pattern": "^shipcast\\.webhook$", "apply-to": "queues", "priority": 1000,
            "definition": {"max-length": 0, "overflow": "reject-publish"}}).raise_for_status()
        waiting = await services.publisher.publish(*(example("RET", partner_id="acme") for _ in range(5)))

        # One migration at a time: while another holds its lock, this one refuses before doing anything.
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            channel = await connection.channel()
            await channel.declare_queue("shipcast.migration.lock", exclusive=True)
            refused = await asyncio.to_thread(run_cli, settings, "queues", "migrate", "--channel", "webhook")
            holding = await channel.declare_queue("shipcast.webhook.migrating", passive=True)
            assert holding.declaration_result.message_count == 5  # untouched
        finally:
            await connection.close()
        assert refused.returncode == 1 and "another `shipcast queues migrate` is running" in refused.stderr

        result = await asyncio.to_thread(run_cli, settings, "queues", "migrate", "--channel", "webhook")
        assert result.returncode == 0, result.stderr
        assert "1 queue migrated" in result.stdout
        assert {b["routing_key"] for b in management.get(f"{queue_url}/bindings").json() if b["source"]} == bindings
        assert not [p["name"] for p in management.get(f"/api/policies/{vhost}").json() if "migrating" in p["name"]]
        assert not [q["name"] for q in management.get(f"/api/queues/{vhost}").json() if "migrating" in q["name"]]
        # The queue takes new events again, and every event reaches the partner.
        waiting += await services.publisher.publish(example("DEL", partner_id="acme"))
        await _delivered_once(settings, receiver, waiting)
