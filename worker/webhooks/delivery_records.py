"""A stored webhook delivery as the event store keeps it: its id, its record and attempts, and their encoding.

A delivery id is the event id for the ``default`` endpoint (what every event stored before several
endpoints existed is) and ``<event_id>@<endpoint>`` for the others. :class:`EventRecord` is one
delivery as read back; :class:`Attempt` one attempt of its history; :class:`DeadLetter` the dead-letter
record. The ``_encode``/``_decode`` functions are the one mapping to and from the Redis hash fields
(``worker.webhooks.store`` documents the fields). Times are timezone-aware UTC ISO-8601 text.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hokusai_registry.errors import InvalidInputError
from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT
from worker.webhooks.event import WebhookEvent

EventState = Literal["pending", "delivered", "dead"]
#: Attempts kept per event in its history (``webhooks show``); older ones are only counted.
MAX_ATTEMPT_HISTORY = 20
ATTEMPT_FIELD = "attempt:"


def delivery_id(event_id: str, endpoint: str = DEFAULT_ENDPOINT) -> str:
    """The id of ``event_id``'s delivery to ``endpoint`` (the event id itself for ``default``)."""
    return event_id if endpoint == DEFAULT_ENDPOINT else f"{event_id}@{endpoint}"


def endpoint_of_delivery(ident: str) -> str:
    """The endpoint a delivery id names (see :func:`delivery_id`)."""
    return ident.rpartition("@")[2] if "@" in ident else DEFAULT_ENDPOINT


def version_rank(version: str) -> float:
    """A version's place in per-model order (MLflow versions are whole numbers; others rank first)."""
    try:
        return float(int(version))
    except ValueError:
        return 0.0


class DeadLetter(BaseModel):
    """The index entry of a dead-lettered delivery (its body and history stay in the event hash).

    ``event_id`` is the delivery id (see the module docstring); entries written before endpoints
    existed have no ``endpoint`` and are the ``default`` endpoint's.
    """

    model_config = ConfigDict(frozen=True)

    event_id: str
    endpoint: str = DEFAULT_ENDPOINT
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
    endpoint: str = DEFAULT_ENDPOINT
    task_id: str | None = None
    traceparent: str | None = None

    @property
    def delivery_id(self) -> str:
        """This delivery's id (the store's key for it)."""
        return delivery_id(self.event.event_id, self.endpoint)

    def as_dict(self, *, include_body: bool = False, include_history: bool = False) -> dict[str, Any]:
        """JSON-friendly summary (times as UTC ISO-8601); the body as parsed JSON and the history when asked."""
        event = self.event
        summary: dict[str, Any] = {
            "event_id": event.event_id,
            "delivery_id": self.delivery_id,
            "endpoint": self.endpoint,
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


def encode_event(event: WebhookEvent) -> str:
    return json.dumps(
        {
            "event_id": event.event_id,
            "body_b64": base64.b64encode(event.body).decode("ascii"),
            "created_at": iso(event.created_at),
            "model_name": event.model_name,
            "version": event.version,
            "job_id": event.job_id,
        }
    )


def decode_record(fields: dict[str, str], due: float | None) -> EventRecord:
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
        (decode_attempt(int(name.removeprefix(ATTEMPT_FIELD)), value)
         for name, value in fields.items() if name.startswith(ATTEMPT_FIELD)),
        key=lambda attempt: attempt.number,
    )  # fmt: skip
    return EventRecord(
        event=event,
        state=fields.get("state", "pending"),  # type: ignore[arg-type]
        attempts=int(fields.get("attempts", 0)),
        first_attempt_at=parse_time(fields.get("first_attempt_at")),
        last_attempt_at=parse_time(fields.get("last_attempt_at")),
        last_status_code=int(status) if status else None,
        last_error=fields.get("last_error") or None,
        dead_reason=fields.get("dead_reason") or None,
        dead_lettered_at=parse_time(fields.get("dead_lettered_at")),
        delivered_at=parse_time(fields.get("delivered_at")),
        deferred_until=datetime.fromtimestamp(due, UTC) if due is not None else None,
        history=tuple(history),
        endpoint=fields.get("endpoint") or DEFAULT_ENDPOINT,
        task_id=fields.get("task_id") or None,
        traceparent=fields.get("traceparent") or None,
    )


def decode_attempt(number: int, text: str) -> Attempt:
    data = json.loads(text)
    return Attempt(number, datetime.fromisoformat(data["at"]), data["status_code"], data["error"], data["duration_s"])


def utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    if moment.tzinfo is None:
        raise InvalidInputError(f"times must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def iso(moment: datetime | None) -> str:
    return utc(moment).isoformat()


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
