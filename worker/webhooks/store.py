"""Durable webhook events in Redis: the stored event, its attempts, dead letters and deferred retries.

An event is saved *before* its first attempt and every attempt or replay sends the stored bytes,
so the body and the idempotency key never change. Keys (``hokusai_registry.keys.WebhookKeys``,
whose docstring lists them with their types): the event hash, the job's event id, the dead
letters (a ``RecordStore``, the layout of failed jobs and quarantine) and the deferred schedule.
The event hash holds ``event`` (JSON: id, base64 body, created_at, name, version, job_id),
``state``, ``attempts``, ``first/last_attempt_at``, ``last_status_code``, ``last_error``,
``dead_reason``, ``dead_lettered_at``, ``delivered_at`` and the history: ``attempt:<n>`` →
``{at, status_code, error, duration_s}`` (JSON) for the last ``MAX_ATTEMPT_HISTORY`` attempts.

One event becomes one *delivery* per endpoint it goes to (``hokusai_registry.webhook_policy``):
each delivery is such a hash, under its delivery id (:func:`delivery_id`: the event id itself for
the ``default`` endpoint, so every event stored before endpoints existed is the default endpoint's
delivery; ``<event_id>@<endpoint>`` for the others), with its own attempts, schedule and dead
letter, the same event (id and body) in each. The hash also holds ``endpoint``, ``task_id`` (the
Celery task id its retries run under) and ``traceparent`` when set. Every method's ``event_id`` is
such a delivery id. Deliveries to a disabled endpoint are *held* (:meth:`EventStore.hold`) and
released oldest first (:meth:`EventStore.release_held`); a model's undelivered versions per endpoint
are indexed by version (:meth:`EventStore.earlier_pending`, for per-model order).

Times are stored as timezone-aware UTC ISO-8601 text. Delivered events (and their job's key)
expire after ``delivered_ttl_s``; dead letters stay until replayed or removed (at most
``records.DEFAULT_MAX_RECORDS``, like every record store). Build a store from the settings with
:meth:`EventStore.for_settings` (the worker and the CLI alike). Redis failures are raised as
``BrokerUnavailableError`` (a refused password as ``ConfigurationError``), by the one translation
of ``hokusai_registry.redis_client``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import redis

from hokusai_registry.errors import InvalidInputError
from hokusai_registry.keys import PREFIX, WebhookKeys
from hokusai_registry.records import RecordStore
from hokusai_registry.redis_client import connect, redis_method
from hokusai_registry.settings import Settings
from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT
from worker.webhooks.delivery_records import (
    ATTEMPT_FIELD,
    MAX_ATTEMPT_HISTORY,
    DeadLetter,
    EventRecord,
    decode_record,
    delivery_id,
    encode_event,
    iso,
    text,
    utc,
    version_rank,
)
from worker.webhooks.event import WebhookEvent

logger = logging.getLogger(__name__)

DEFAULT_DELIVERED_TTL_S = 7 * 24 * 3600
MAX_CLAIM = 1000
#: Every method that reads or writes Redis runs inside redis_client's one error translation.
_using_redis = redis_method("using the webhook event store")

# Counts an attempt only on an existing event, so a removed event is not half re-created; adds it
# to the history as field ARGV[5]..n and drops the one that falls out of the last ARGV[6].
_RECORD_ATTEMPT = """
if redis.call('HEXISTS', KEYS[1], 'event') == 0 then return -1 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'first_attempt_at', ARGV[1])
redis.call('HSET', KEYS[1], 'last_attempt_at', ARGV[1], 'last_status_code', ARGV[2], 'last_error', ARGV[3],
           ARGV[5] .. attempts, ARGV[4])
local dropped = attempts - tonumber(ARGV[6])
if dropped > 0 then redis.call('HDEL', KEYS[1], ARGV[5] .. dropped) end
return attempts
"""

# Read and lease in one step, so two workers never claim the same id: a claimed id is moved
# ARGV[3] seconds into the future instead of removed, so a claimer that dies before handing it
# over only delays it. Delivery, dead-lettering, a new defer or a Celery retry then settle it.
_CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), id) end
return ids
"""


# Moves every held delivery (KEYS[1]) to the schedule (KEYS[2]) at its held score (the event's
# creation time, in the past: due now, oldest first); returns how many.
_RELEASE_HELD = """
local items = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #items, 2 do redis.call('ZADD', KEYS[2], items[i + 1], items[i]) end
redis.call('DEL', KEYS[1])
return #items / 2
"""


class EventStore:
    """Webhook events, dead letters and the deferred-retry schedule in one Redis database.

    Args:
        client: a ``redis.Redis`` (with or without ``decode_responses``).
        prefix: first part of every key (``hokusai_registry.keys.WebhookKeys``).
        delivered_ttl_s: how long a delivered event is kept (a re-run task then sees it delivered).
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = PREFIX, delivered_ttl_s: int = DEFAULT_DELIVERED_TTL_S
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = WebhookKeys(prefix)
        self.delivered_ttl_s = delivered_ttl_s
        self.dead_letters: RecordStore[DeadLetter] = RecordStore(
            client,
            self.keys.dead_letters,
            DeadLetter,
            id_field="event_id",
            time_field="dead_lettered_at",
            label="dead-lettered webhook events",
        )
        self._record_attempt = client.register_script(_RECORD_ATTEMPT)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._release_held = client.register_script(_RELEASE_HELD)

    @classmethod
    def for_settings(cls, settings: Settings, client: redis.Redis | None = None) -> EventStore:
        """The one factory: the store on ``client`` (default: a new one on ``REDIS_URL``), delivered
        events kept as long as results (``RESULT_EXPIRES_S``). Workers pass their process's client.
        """
        client = client if client is not None else connect(settings.redis_url)
        return cls(client, delivered_ttl_s=settings.result_expires_s)

    # ------------------------------------------------------------------ events
    @_using_redis
    def save_if_absent(self, event: WebhookEvent) -> WebhookEvent:
        """Store ``event`` (its ``default`` delivery) unless stored; return the stored one either way.

        A task run twice therefore sends the first build's bytes and timestamp, not a new one.
        """
        self.save_delivery(event)
        stored = self.get(event.event_id)
        return stored.event if stored is not None else event  # None only if it expired just now

    @_using_redis
    def save_delivery(
        self,
        event: WebhookEvent,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        task_id: str | None = None,
        traceparent: str | None = None,
        job_key: bool = True,
    ) -> bool:
        """Store ``event``'s delivery to ``endpoint`` unless it exists; True when it was created now.

        ``job_key``: point the job's event key at this delivery (``jobs status``), unless set already.
        """
        ident = delivery_id(event.event_id, endpoint)
        key = self.keys.event(ident)
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(key, "event", encode_event(event))
        pipe.hsetnx(key, "state", "pending")
        pipe.hsetnx(key, "endpoint", endpoint)
        if task_id:
            pipe.hsetnx(key, "task_id", task_id)
        if traceparent:
            pipe.hsetnx(key, "traceparent", traceparent)
        if event.job_id is not None and job_key:  # nx: an existing key keeps its expiry
            pipe.set(self.keys.job(event.job_id), ident, nx=True)
        created = bool(pipe.execute()[0])
        if created:
            self.client.zadd(self.keys.order(endpoint, event.model_name), {ident: version_rank(event.version)})
            logger.info("webhook event %s stored for endpoint %s", event.event_id, endpoint)
        return created

    @_using_redis
    def get(self, event_id: str) -> EventRecord | None:
        """The stored event with its history, or None when unknown (or expired after delivery)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.event(event_id))
        pipe.zscore(self.keys.deferred, event_id)
        fields, due = pipe.execute()
        if not fields:
            return None
        return decode_record({text(k): text(v) for k, v in fields.items()}, due)

    @_using_redis
    def get_for_job(self, job_id: str) -> EventRecord | None:
        """The event of job ``job_id``, or None when it has none (yet, or any more)."""
        event_id = self.client.get(self.keys.job(job_id))
        if event_id is not None:
            return self.get(text(event_id))
        # an event stored before the job key existed: its dead letter names the job
        letters = [letter for letter in self.dead_letters.list() if letter.job_id == job_id]
        return self.get(letters[-1].event_id) if letters else None

    @_using_redis
    def record_attempt(
        self,
        event_id: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        at: datetime | None = None,
        duration_s: float | None = None,
    ) -> int:
        """Count one attempt (made ``at``, default now) with its HTTP status or error text and its
        duration, keep it in the history (the last ``MAX_ATTEMPT_HISTORY``); return the attempts so far.

        Raises:
            InvalidInputError: no such event.
        """
        moment = iso(at)
        entry = {"at": moment, "status_code": status_code, "error": error, "duration_s": duration_s}
        attempts = int(
            self._record_attempt(
                keys=[self.keys.event(event_id)],
                args=[
                    moment,
                    "" if status_code is None else str(status_code),
                    error or "",
                    json.dumps(entry),
                    ATTEMPT_FIELD,
                    MAX_ATTEMPT_HISTORY,
                ],
            )
        )
        if attempts < 0:
            raise InvalidInputError(f"no stored webhook event {event_id}")
        return attempts

    @_using_redis
    def mark_delivered(self, event_id: str, *, at: datetime | None = None) -> None:
        """Mark delivered: leave the dead letters and the schedule, expire after ``delivered_ttl_s``."""
        key, job_id = self._require_with_job(event_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"state": "delivered", "delivered_at": iso(at)})
        self.dead_letters.remove_in(pipe, event_id)
        pipe.zrem(self.keys.deferred, event_id)
        self._leave_order(pipe, event_id)
        pipe.expire(key, self.delivered_ttl_s)
        if job_id is not None:
            pipe.expire(self.keys.job(job_id), self.delivered_ttl_s)
        pipe.execute()

    # ------------------------------------------------------------------ dead letters
    @_using_redis
    def dead_letter(self, event_id: str, reason: str, *, at: datetime | None = None) -> None:
        """Keep an event that could not be delivered, with ``reason``, until replayed or removed."""
        key = self._require(event_id)
        stored = self.get(event_id)
        assert stored is not None  # _require saw it
        moment = utc(at)
        letter = DeadLetter(
            event_id=event_id,
            endpoint=stored.endpoint,
            job_id=stored.event.job_id,
            model_name=stored.event.model_name,
            version=str(stored.event.version),
            reason=reason,
            dead_lettered_at=moment,
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"state": "dead", "dead_reason": reason, "dead_lettered_at": iso(moment)})
        pipe.persist(key)
        if stored.event.job_id is not None:
            pipe.set(self.keys.job(stored.event.job_id), event_id)  # kept as long as the dead letter
        self.dead_letters.put_in(pipe, letter)
        pipe.zrem(self.keys.deferred, event_id)
        self._leave_order(pipe, event_id)
        pipe.execute()
        self.dead_letters.trim()
        logger.warning("webhook event %s dead-lettered", event_id)

    @_using_redis
    def list_dead_letters(self, since: datetime | None = None, *, endpoint: str | None = None) -> list[EventRecord]:
        """Dead letters, oldest first; with ``since``, only those dead-lettered at or after it; with
        ``endpoint``, only that endpoint's."""
        letters = [letter for letter in self.dead_letters.list(since) if endpoint in (None, letter.endpoint)]
        records = [self.get(letter.event_id) for letter in letters]
        return [record for record in records if record is not None]

    @_using_redis
    def counts(self) -> tuple[int, int]:
        """(dead letters, events waiting in the durable schedule), right now (the metrics read it)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.dead_letters.index_key)
        pipe.zcard(self.keys.deferred)
        dead, deferred = pipe.execute()
        return int(dead), int(deferred)

    @_using_redis
    def remove_dead_letter(self, event_id: str) -> bool:
        """Discard a dead letter for good; False when ``event_id`` is not one."""
        stored = self.get(event_id)
        if not self.dead_letters.remove(event_id):
            return False
        self.client.delete(self.keys.event(event_id))
        if stored is not None and stored.event.job_id is not None:
            self.client.delete(self.keys.job(stored.event.job_id))
        logger.info("dead letter %s removed", event_id)
        return True

    # ------------------------------------------------------------------ deferred retries
    @_using_redis
    def defer(self, event_id: str, due_at: datetime) -> None:
        """Schedule a retry at ``due_at`` durably (for waits too long for a Celery countdown)."""
        self._require(event_id)
        self.client.zadd(self.keys.deferred, {event_id: utc(due_at).timestamp()})

    @_using_redis
    def wake(self, event_id: str) -> bool:
        """Make a delivery that waits in the schedule due now; False when it is not scheduled."""
        return bool(self.client.zadd(self.keys.deferred, {event_id: utc(None).timestamp()}, xx=True, ch=True))

    @_using_redis
    def undefer(self, event_id: str) -> None:
        """Take an event off the schedule (a Celery retry holds it now, or it needs no retry)."""
        self.client.zrem(self.keys.deferred, event_id)

    @_using_redis
    def claim_due(self, now: datetime | None = None, limit: int = 100, *, lease_s: float = 300) -> list[str]:
        """Claim up to ``limit`` events due at ``now`` (oldest due first) for ``lease_s`` seconds.

        Atomic (one Lua script): concurrent callers get disjoint ids, and an empty answer means
        nothing is due. A claimed id stays scheduled, ``lease_s`` later: if the caller dies before
        its retry runs, the event comes due again instead of being lost.
        """
        if not 1 <= limit <= MAX_CLAIM:
            raise InvalidInputError(f"limit must be between 1 and {MAX_CLAIM}, got {limit}")
        if lease_s <= 0:
            raise InvalidInputError(f"lease_s must be positive, got {lease_s}")
        claimed = self._claim_due(keys=[self.keys.deferred], args=[utc(now).timestamp(), limit, lease_s])
        return [text(item) for item in claimed]

    # ------------------------------------------------------------------ held (disabled endpoint)
    @_using_redis
    def hold(self, event_id: str) -> None:
        """Keep a delivery whose endpoint is disabled, off the schedule, until :meth:`release_held`."""
        stored = self.get(event_id)
        if stored is None:
            raise InvalidInputError(f"no stored webhook event {event_id}")
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.keys.held(stored.endpoint), {event_id: stored.event.created_at.timestamp()})
        pipe.zrem(self.keys.deferred, event_id)
        pipe.execute()

    @_using_redis
    def held(self, endpoint: str) -> list[str]:
        """The deliveries held for ``endpoint``, oldest event first."""
        return [text(item) for item in self.client.zrange(self.keys.held(endpoint), 0, -1)]

    @_using_redis
    def release_held(self, endpoint: str) -> int:
        """Put ``endpoint``'s held deliveries back on the schedule, due now, oldest event first.

        Each is scheduled at its event's creation time (long past), so the pump hands them over
        in that order. Returns how many.
        """
        return int(self._release_held(keys=[self.keys.held(endpoint), self.keys.deferred]) or 0)

    # ------------------------------------------------------------------ per-model order
    @_using_redis
    def earlier_pending(self, record: EventRecord) -> EventRecord | None:
        """The earliest undelivered, not dead-lettered version of ``record``'s model to its endpoint,
        when it is earlier than ``record``'s version; else None (``record`` may go)."""
        key = self.keys.order(record.endpoint, record.event.model_name)
        rank = version_rank(record.event.version)
        for item in self.client.zrangebyscore(key, "-inf", f"({rank}", start=0, num=5):
            found = self.get(text(item))
            if found is not None and found.state == "pending":
                return found
            self.client.zrem(key, item)  # expired or settled without leaving: no longer in the way
        return None

    @_using_redis
    def next_in_order(self, record: EventRecord) -> str | None:
        """The delivery id of the next version of ``record``'s model to its endpoint, if any waits."""
        key = self.keys.order(record.endpoint, record.event.model_name)
        after = self.client.zrangebyscore(key, f"({version_rank(record.event.version)}", "+inf", start=0, num=1)
        return text(after[0]) if after else None

    # ------------------------------------------------------------------ internals
    def _leave_order(self, pipe: Any, event_id: str) -> None:
        """Queue the removal of ``event_id`` from its model's order index onto ``pipe``."""
        stored = self.get(event_id)
        if stored is not None:
            pipe.zrem(self.keys.order(stored.endpoint, stored.event.model_name), event_id)

    def _require(self, event_id: str) -> str:
        key = self.keys.event(event_id)
        if not self.client.hexists(key, "event"):
            raise InvalidInputError(f"no stored webhook event {event_id}")
        return key

    def _require_with_job(self, event_id: str) -> tuple[str, str | None]:
        key = self.keys.event(event_id)
        encoded = self.client.hget(key, "event")
        if encoded is None:
            raise InvalidInputError(f"no stored webhook event {event_id}")
        job_id: str | None = json.loads(text(encoded))["job_id"]
        return key, job_id
