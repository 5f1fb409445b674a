"""Durable webhook events in Redis: the stored event, its attempts, dead letters and deferred retries.

An event is saved *before* its first attempt and every attempt or replay sends the stored bytes,
so the body and the idempotency key never change. Keys (``hokusai_registry.keys.WebhookKeys``,
whose docstring lists them with their types): the event hash, the job's event id, the dead
letters (a ``RecordStore``, the layout of failed jobs and quarantine) and the deferred schedule.
The event hash holds ``event`` (JSON: id, base64 body, created_at, name, version, job_id),
``state``, ``attempts``, ``first/last_attempt_at``, ``last_status_code``, ``last_error``,
``dead_reason``, ``dead_lettered_at``, ``delivered_at`` and the history: ``attempt:<n>`` →
``{at, status_code, error, duration_s}`` (JSON) for the last ``MAX_ATTEMPT_HISTORY`` attempts.

Times are stored as timezone-aware UTC ISO-8601 text. Delivered events (and their job's key)
expire after ``delivered_ttl_s``; dead letters stay until replayed or removed (at most
``records.DEFAULT_MAX_RECORDS``, like every record store). Build a store from the settings with
:meth:`EventStore.for_settings` (the worker and the CLI alike). Redis failures are raised as
``BrokerUnavailableError`` (a refused password as ``ConfigurationError``), by the one translation
of ``hokusai_registry.redis_client``.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict

from hokusai_registry.errors import InvalidInputError
from hokusai_registry.keys import PREFIX, WebhookKeys
from hokusai_registry.records import RecordStore
from hokusai_registry.redis_client import connect, redis_method
from hokusai_registry.settings import Settings
from worker.webhooks.event import WebhookEvent

logger = logging.getLogger(__name__)

EventState = Literal["pending", "delivered", "dead"]
DEFAULT_DELIVERED_TTL_S = 7 * 24 * 3600
MAX_CLAIM = 1000
#: Attempts kept per event in its history (``webhooks show``); older ones are only counted.
MAX_ATTEMPT_HISTORY = 20
_ATTEMPT_FIELD = "attempt:"
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


class DeadLetter(BaseModel):
    """The index entry of a dead-lettered event (its body and history stay in the event hash)."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    job_id: str | None = None
    model_name: str
    version: str
    reason: str
    dead_lettered_at: datetime


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt in an event's history: when (UTC), the HTTP status or error, how long."""

    number: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_s: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the time as UTC ISO-8601)."""
        return {
            "attempt": self.number,
            "at": self.at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True)
class EventRecord:
    """A stored event with its delivery summary and history (what ``show`` prints)."""

    event: WebhookEvent
    state: EventState
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    dead_reason: str | None
    dead_lettered_at: datetime | None
    delivered_at: datetime | None
    deferred_until: datetime | None
    history: tuple[Attempt, ...] = ()  # oldest first: the last MAX_ATTEMPT_HISTORY attempts

    def as_dict(self, *, include_body: bool = False, include_history: bool = False) -> dict[str, Any]:
        """JSON-friendly summary (times as UTC ISO-8601); the body as parsed JSON and the history when asked."""
        event = self.event
        summary: dict[str, Any] = {
            "event_id": event.event_id,
            "model_name": event.model_name,
            "version": event.version,
            "job_id": event.job_id,
            "created_at": event.created_at.isoformat(),
            "state": self.state,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "dead_reason": self.dead_reason,
        }
        for name in ("first_attempt_at", "last_attempt_at", "dead_lettered_at", "delivered_at", "deferred_until"):
            moment = getattr(self, name)
            summary[name] = moment.isoformat() if moment else None
        if include_history:
            summary["history"] = [attempt.as_dict() for attempt in self.history]
        if include_body:
            summary["body"] = json.loads(event.body)
        return summary


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
        """Store ``event`` unless one with its id exists; return the stored one either way.

        A task run twice therefore sends the first build's bytes and timestamp, not a new one.
        """
        key = self.keys.event(event.event_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(key, "event", _encode_event(event))
        pipe.hsetnx(key, "state", "pending")
        if event.job_id is not None:  # nx: an existing key keeps its expiry
            pipe.set(self.keys.job(event.job_id), event.event_id, nx=True)
        created = pipe.execute()[0]
        if created:
            logger.info("webhook event %s stored", event.event_id)
            return event
        stored = self.get(event.event_id)
        return stored.event if stored is not None else event  # None only if it expired just now

    @_using_redis
    def get(self, event_id: str) -> EventRecord | None:
        """The stored event with its history, or None when unknown (or expired after delivery)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.event(event_id))
        pipe.zscore(self.keys.deferred, event_id)
        fields, due = pipe.execute()
        if not fields:
            return None
        return _decode_record({_text(k): _text(v) for k, v in fields.items()}, due)

    @_using_redis
    def get_for_job(self, job_id: str) -> EventRecord | None:
        """The event of job ``job_id``, or None when it has none (yet, or any more)."""
        event_id = self.client.get(self.keys.job(job_id))
        if event_id is not None:
            return self.get(_text(event_id))
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
        moment = _iso(at)
        entry = {"at": moment, "status_code": status_code, "error": error, "duration_s": duration_s}
        attempts = int(
            self._record_attempt(
                keys=[self.keys.event(event_id)],
                args=[
                    moment,
                    "" if status_code is None else str(status_code),
                    error or "",
                    json.dumps(entry),
                    _ATTEMPT_FIELD,
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
        pipe.hset(key, mapping={"state": "delivered", "delivered_at": _iso(at)})
        self.dead_letters.remove_in(pipe, event_id)
        pipe.zrem(self.keys.deferred, event_id)
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
        moment = _utc(at)
        letter = DeadLetter(
            event_id=event_id,
            job_id=stored.event.job_id,
            model_name=stored.event.model_name,
            version=str(stored.event.version),
            reason=reason,
            dead_lettered_at=moment,
        )
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"state": "dead", "dead_reason": reason, "dead_lettered_at": _iso(moment)})
        pipe.persist(key)
        if stored.event.job_id is not None:
            pipe.set(self.keys.job(stored.event.job_id), event_id)  # kept as long as the dead letter
        self.dead_letters.put_in(pipe, letter)
        pipe.zrem(self.keys.deferred, event_id)
        pipe.execute()
        self.dead_letters.trim()
        logger.warning("webhook event %s dead-lettered", event_id)

    @_using_redis
    def list_dead_letters(self, since: datetime | None = None) -> list[EventRecord]:
        """Dead letters, oldest first; with ``since``, only those dead-lettered at or after it."""
        records = [self.get(letter.event_id) for letter in self.dead_letters.list(since)]
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
        self.client.zadd(self.keys.deferred, {event_id: _utc(due_at).timestamp()})

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
        claimed = self._claim_due(keys=[self.keys.deferred], args=[_utc(now).timestamp(), limit, lease_s])
        return [_text(item) for item in claimed]

    # ------------------------------------------------------------------ internals
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
        job_id: str | None = json.loads(_text(encoded))["job_id"]
        return key, job_id


def _encode_event(event: WebhookEvent) -> str:
    return json.dumps(
        {
            "event_id": event.event_id,
            "body_b64": base64.b64encode(event.body).decode("ascii"),
            "created_at": _iso(event.created_at),
            "model_name": event.model_name,
            "version": event.version,
            "job_id": event.job_id,
        }
    )


def _decode_record(fields: dict[str, str], due: float | None) -> EventRecord:
    data = json.loads(fields["event"])
    event = WebhookEvent(
        event_id=data["event_id"],
        body=base64.b64decode(data["body_b64"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        model_name=data["model_name"],
        version=data["version"],
        job_id=data["job_id"],
    )
    status = fields.get("last_status_code")
    history = sorted(
        (_decode_attempt(int(name.removeprefix(_ATTEMPT_FIELD)), value)
         for name, value in fields.items() if name.startswith(_ATTEMPT_FIELD)),
        key=lambda attempt: attempt.number,
    )  # fmt: skip
    return EventRecord(
        event=event,
        state=fields.get("state", "pending"),  # type: ignore[arg-type]
        attempts=int(fields.get("attempts", 0)),
        first_attempt_at=_parse_time(fields.get("first_attempt_at")),
        last_attempt_at=_parse_time(fields.get("last_attempt_at")),
        last_status_code=int(status) if status else None,
        last_error=fields.get("last_error") or None,
        dead_reason=fields.get("dead_reason") or None,
        dead_lettered_at=_parse_time(fields.get("dead_lettered_at")),
        delivered_at=_parse_time(fields.get("delivered_at")),
        deferred_until=datetime.fromtimestamp(due, UTC) if due is not None else None,
        history=tuple(history),
    )


def _decode_attempt(number: int, text: str) -> Attempt:
    data = json.loads(text)
    return Attempt(number, datetime.fromisoformat(data["at"]), data["status_code"], data["error"], data["duration_s"])


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    if moment.tzinfo is None:
        raise InvalidInputError(f"times must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str:
    return _utc(moment).isoformat()


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
