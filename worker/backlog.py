"""The true backlog: every job of the product's queues not done yet, by state, read from Redis.

One computation for the worker's ``/metrics`` (``hokusai_backlog_jobs``,
``hokusai_backlog_oldest_age_seconds``) and ``hokusai-registry backlog``. A job is in one of three
states (docs/scaling.md, "The backlog, and how many workers"):

* ``waiting``: a message in one of the product's queue lists (``worker.queues``, every priority list);
* ``held``: delivered to a worker and not acked yet, in kombu's ``unacked`` hash: running, prefetched,
  or waiting in a worker's memory for its ETA/countdown (a registration's retry);
* ``scheduled``: a webhook delivery in the durable schedule (``hokusai_registry.keys``: the
  ``deferred`` zset, and the deliveries held for a disabled endpoint), counted on the webhook queue.

Only the product's queues count: Celery's pidbox and reply queues are other lists, and their
messages are never acked (never in ``unacked``). One pipeline reads it all, plus one small one
only when an endpoint is disabled. Lists and zsets are counted (LLEN, ZCARD); only the oldest
message of each queue list is decoded, for its enqueue stamp. The ``unacked`` hash holds every
application's unacked messages on this Redis database, so telling the product's apart needs each
entry's routing key: a Lua script reads only the tail of each value (kombu stores
``[message, exchange, routing_key]``) server-side, in pages, and returns a count per queue, so no
message crosses the network or is parsed. It runs in O(held); held is bounded by the workers'
prefetch plus the ETA retries they keep.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from kombu.transport.redis import Channel

from hokusai_registry.contract import ENQUEUED_AT_HEADER, WEBHOOK_QUEUE
from hokusai_registry.keys import PREFIX, WebhookKeys
from hokusai_registry.redis_client import describe, redis_boundary
from worker.queues import QUEUES, queue_keys

State = Literal["waiting", "held", "scheduled"]
#: The backlog's states, in the order docs, metrics and the CLI list them.
STATES: tuple[State, ...] = ("waiting", "held", "scheduled")

#: kombu's Redis transport keeps every delivered, unacked message here (its defaults; not ours).
UNACKED_KEY = Channel.unacked_key
UNACKED_INDEX_KEY = Channel.unacked_index_key

# KEYS[1]: kombu's unacked hash, KEYS[2]: its index (delivery tag -> delivered at, Unix s); ARGV: queue
# names. For each queue (ARGV order): how many unacked messages were routed to it, and the earliest
# delivery time among them ('' if none). Reads only the last 256 bytes of each value: the routing key
# is the last JSON string of kombu's [message, exchange, routing_key].
_COUNT_HELD = """
local index = {}
local counts = {}
local oldest = {}
for i, name in ipairs(ARGV) do index[name] = i; counts[i] = 0; oldest[i] = false end
local cursor = '0'
repeat
  local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
  cursor = page[1]
  local items = page[2]
  for j = 1, #items, 2 do
    local routing_key = string.match(string.sub(items[j + 1], -256), '"([^"]*)"%s*%]%s*$')
    local i = routing_key and index[routing_key]
    if i then
      counts[i] = counts[i] + 1
      local at = tonumber(redis.call('ZSCORE', KEYS[2], items[j]))
      if at and (not oldest[i] or at < oldest[i]) then oldest[i] = at end
    end
  end
until cursor == '0'
local out = {}
for i = 1, #ARGV do
  out[#out + 1] = counts[i]
  out[#out + 1] = oldest[i] and string.format('%.3f', oldest[i]) or ''
end
return out
"""


@dataclass(frozen=True)
class QueueBacklog:
    """One queue's jobs by state, and how long the oldest of them has been in the backlog."""

    queue: str
    waiting: int
    held: int
    scheduled: int
    oldest_age_s: float

    @property
    def total(self) -> int:
        return self.waiting + self.held + self.scheduled

    def as_dict(self) -> dict[str, Any]:
        return {
            "waiting": self.waiting,
            "held": self.held,
            "scheduled": self.scheduled,
            "total": self.total,
            "oldest_age_s": round(self.oldest_age_s, 3),
        }


@dataclass(frozen=True)
class Backlog:
    """The product's backlog at ``at``: per queue, and summed."""

    at: datetime
    queues: tuple[QueueBacklog, ...]

    def count(self, state: State) -> int:
        """How many jobs are in ``state`` over every queue."""
        return sum(int(getattr(queue, state)) for queue in self.queues)

    @property
    def total(self) -> int:
        return sum(queue.total for queue in self.queues)

    @property
    def oldest_age_s(self) -> float:
        """Seconds the oldest job of the backlog has been in it (0 when empty)."""
        return max((queue.oldest_age_s for queue in self.queues), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        """What ``hokusai-registry backlog`` prints."""
        return {
            **{state: self.count(state) for state in STATES},
            "total": self.total,
            "oldest_age_s": round(self.oldest_age_s, 3),
            "at": self.at.isoformat(),
            "queues": {queue.queue: queue.as_dict() for queue in self.queues},
        }


def message_age_s(raw: bytes | str | None, now: float) -> float | None:
    """Seconds since a queued message was enqueued, from its stamp; None when absent or unstamped."""
    if raw is None:
        return None
    try:
        stamped = json.loads(raw).get("headers", {}).get(ENQUEUED_AT_HEADER)
        return max(0.0, now - float(stamped))
    except (ValueError, TypeError, AttributeError):
        return None  # not a message stamped by this product: its age is unknown


def read_backlog(client: redis.Redis, *, prefix: str = PREFIX, now: float | None = None) -> Backlog:
    """The backlog as Redis holds it now (one pipeline; a second, small one for disabled endpoints).

    Raises:
        BrokerUnavailableError: Redis could not be reached or timed out.
        ConfigurationError: Redis refused the credentials.
    """
    moment = time.time() if now is None else now
    keys = WebhookKeys(prefix)
    with redis_boundary(describe(client), "reading the backlog"):
        count_held = client.register_script(_COUNT_HELD)
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            for key in queue_keys(queue):
                pipe.llen(key)
                pipe.lindex(key, -1)  # kombu LPUSHes and BRPOPs: the oldest is at the right end
        count_held(keys=[UNACKED_KEY, UNACKED_INDEX_KEY], args=list(QUEUES), client=pipe)
        pipe.zcard(keys.deferred)
        pipe.zrange(keys.deferred, 0, 0, withscores=True)  # the earliest due
        pipe.zrange(keys.disabled_endpoints, 0, -1)
        replies = pipe.execute()
        disabled = [_text(name) for name in replies[-1]]
        held_for_endpoints = _held_for_disabled(client, keys, disabled)
    return _assemble(replies[:-1], held_for_endpoints, moment)


def _held_for_disabled(client: redis.Redis, keys: WebhookKeys, endpoints: list[str]) -> list[tuple[int, float | None]]:
    """(count, oldest event's creation time) of the deliveries held for each disabled endpoint."""
    if not endpoints:
        return []
    pipe = client.pipeline(transaction=False)
    for endpoint in endpoints:
        pipe.zcard(keys.held(endpoint))
        pipe.zrange(keys.held(endpoint), 0, 0, withscores=True)  # scored by the event's creation time
    replies = pipe.execute()
    return [(int(replies[i]), _first_score(replies[i + 1])) for i in range(0, len(replies), 2)]


def _assemble(replies: list[Any], held_for_endpoints: list[tuple[int, float | None]], now: float) -> Backlog:
    position = 0
    waiting: dict[str, tuple[int, float]] = {}
    for queue in QUEUES:
        depth, oldest = 0, 0.0
        for _key in queue_keys(queue):
            depth += int(replies[position])
            oldest = max(oldest, message_age_s(replies[position + 1], now) or 0.0)
            position += 2
        waiting[queue] = (depth, oldest)
    held_reply, deferred_count, earliest_due = replies[position], replies[position + 1], replies[position + 2]
    held: dict[str, tuple[int, float]] = {}
    for i, queue in enumerate(QUEUES):
        count, delivered_at = int(held_reply[2 * i]), _text(held_reply[2 * i + 1])
        held[queue] = (count, max(0.0, now - float(delivered_at)) if delivered_at else 0.0)
    # Scheduled (on the webhook queue): a deferred delivery ages once due (the schedule keeps it until
    # then by design); one held for a disabled endpoint since its event was created.
    due = _first_score(earliest_due)
    scheduled = int(deferred_count) + sum(count for count, _ in held_for_endpoints)
    scheduled_age = max(
        [max(0.0, now - due) if due is not None else 0.0]
        + [max(0.0, now - created) for _, created in held_for_endpoints if created is not None]
    )
    queues = []
    for queue in QUEUES:
        on_webhooks = queue == WEBHOOK_QUEUE
        queues.append(
            QueueBacklog(
                queue=queue,
                waiting=waiting[queue][0],
                held=held[queue][0],
                scheduled=scheduled if on_webhooks else 0,
                oldest_age_s=max(waiting[queue][1], held[queue][1], scheduled_age if on_webhooks else 0.0),
            )
        )
    return Backlog(at=datetime.fromtimestamp(now, UTC), queues=tuple(queues))


def _first_score(reply: list[tuple[Any, float]]) -> float | None:
    return float(reply[0][1]) if reply else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
