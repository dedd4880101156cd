"""shipcast's queues as ``shipcast status`` and the operator's Queues page
show them: numbers from the RabbitMQ management API, and the problems flagged
(one rule for both)."""

from __future__ import annotations

from typing import Any

from shipcast.amqp.management import Management
from shipcast.amqp.topology import LEGACY_ARGUMENTS, POLICIES, QUEUE_PREFIX
from shipcast.settings import Settings


async def queue_statuses(settings: Settings) -> list[dict[str, Any]]:
    """Every shipcast queue of the virtual host, by name, as :func:`queue_status` rows.

    :raises BrokerUnavailable: the management API cannot be reached or fails.
    :raises ManagementRefused: it refuses the user.
    """
    async with Management(settings) as management:
        found = [q for q in await management.queues() if q["name"].startswith(QUEUE_PREFIX)]
    return [queue_status(queue) for queue in sorted(found, key=lambda q: q["name"])]


def queue_status(queue: dict[str, Any]) -> dict[str, Any]:
    """One queue as ``shipcast status`` shows it: its role, numbers, policy
    and problems (a work queue nobody consumes; a dead queue holding or
    gaining messages; a policy setting missing, or overridden by an argument
    an earlier shipcast declared)."""
    name = queue["name"]
    rest = name.removeprefix(QUEUE_PREFIX).split(".")
    role = "dead" if rest[-1] == "dead" else "retry" if len(rest) > 1 and rest[1] == "retry" else \
        "work" if len(rest) == 1 else "other"
    stats = queue.get("message_stats") or {}
    row: dict[str, Any] = {
        "queue": name, "channel": rest[0] if role != "other" else None, "role": role,
        "ready": queue.get("messages_ready", 0), "unacked": queue.get("messages_unacknowledged", 0),
        "consumers": queue.get("consumers", 0),
        "publish_rate": (stats.get("publish_details") or {}).get("rate", 0.0),
        "ack_rate": (stats.get("ack_details") or {}).get("rate", 0.0),
        "policy": queue.get("policy") or None,
    }
    problems = []
    if role == "work" and not row["consumers"]:
        problems.append("no consumer: start `shipcast worker --channel " + str(row["channel"]) + "`")
    if role == "dead" and row["ready"] + row["unacked"]:
        problems.append(f"{row['ready'] + row['unacked']} parked: `shipcast dead list --channel {row['channel']}`")
    if role == "dead" and row["publish_rate"] > 0:
        problems.append(f"growing ({row['publish_rate']:.1f}/s)")
    arguments = queue.get("arguments") or {}
    legacy = sorted(set(arguments) & set(LEGACY_ARGUMENTS.get(role, {})))
    if legacy:
        problems.append(f"declared with {', '.join(legacy)}, which override its policy: `shipcast queues migrate`")
    # The management API shows a new queue's policy once its statistics refresh (every 5 s).
    effective = queue.get("effective_policy_definition") or {}
    wanted = {key for name, _, definition in POLICIES if name == f"shipcast-{role}" for key in definition}
    if str(row["policy"] or "").startswith("shipcast-migrating-") or name.endswith(".migrating"):
        problems.append("left by a migration that stopped half way: run `shipcast queues migrate`")
    elif "effective_policy_definition" in queue and (missing := sorted(wanted - set(effective))):
        problems.append(f"no {', '.join(missing)} in its policy: the policy is missing, out of date or replaced "
                        f"(`shipcast-{role}`)")
    row["problems"] = problems
    return row
