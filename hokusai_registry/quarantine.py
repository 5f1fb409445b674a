"""Quarantined messages: whatever arrived on a queue that no task could run, kept for an operator.

Raw non-JSON bytes, JSON that is not a Celery message, a body that cannot be decoded, another
content type (pickle), an unknown task name, wrong arguments: the worker keeps each such message
here instead of exiting or dropping it (``worker.poison`` captures it) and goes on consuming.
Nothing is retried. ``hokusai-registry jobs quarantined`` lists them and
``jobs show-quarantined ID`` shows one with its raw bytes. A
:class:`~hokusai_registry.records.RecordStore` under ``keys.QUARANTINE_KEY``::

    hokusai:quarantine          hash  quarantine id -> QuarantineRecord as JSON
    hokusai:quarantine:by_time  zset  quarantine id -> received_at (epoch seconds)

The raw bytes are capped at :data:`MAX_RAW_BYTES` (``size`` keeps the real length).
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hokusai_registry.keys import QUARANTINE_KEY
from hokusai_registry.records import RecordStore, utc

__all__ = ["MAX_RAW_BYTES", "QUARANTINE_KEY", "QuarantineRecord", "quarantine", "store"]

#: At most this many bytes of a message are kept.
MAX_RAW_BYTES = 64 * 1024


class QuarantineRecord(BaseModel):
    """One message that no task could run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quarantine_id: str = Field(min_length=1, max_length=64)
    queue: str = Field(description="The queue it arrived on.")
    reason: str = Field(description="Why it could not run.")
    received_at: datetime = Field(description="When the worker took it off the queue, UTC.")
    size: int = Field(ge=0, description="Length of the message in bytes.")
    raw_b64: str = Field(description=f"The message's bytes (the first {MAX_RAW_BYTES}), base64.")
    task: str | None = Field(default=None, description="The task name it asked for, when it had one.")
    task_id: str | None = Field(default=None, description="The task id it carried, when it had one.")

    @field_validator("received_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc(value)

    @property
    def raw(self) -> bytes:
        """The kept bytes of the message."""
        return base64.b64decode(self.raw_b64)

    def as_dict(self, *, include_raw: bool = False) -> dict[str, Any]:
        """JSON-friendly summary; with ``include_raw`` the bytes as text (undecodable bytes escaped)."""
        data = self.model_dump(mode="json", exclude={"raw_b64"})
        data["truncated"] = self.size > MAX_RAW_BYTES
        if include_raw:
            data["raw"] = self.raw.decode("utf-8", errors="backslashreplace")
            data["raw_b64"] = self.raw_b64
        return data


def store(client: redis.Redis) -> RecordStore[QuarantineRecord]:
    """The quarantine on ``client`` (build it with ``redis_client.connect``)."""
    return RecordStore(
        client,
        QUARANTINE_KEY,
        QuarantineRecord,
        id_field="quarantine_id",
        time_field="received_at",
        label="quarantined messages",
    )


def quarantine(
    client: redis.Redis,
    raw: bytes | str,
    *,
    queue: str,
    reason: str,
    task: str | None = None,
    task_id: str | None = None,
) -> QuarantineRecord:
    """Keep ``raw`` (capped) with where it came from and why it was refused; returns the record."""
    data = raw.encode("utf-8", errors="surrogateescape") if isinstance(raw, str) else bytes(raw)
    record = QuarantineRecord(
        quarantine_id=uuid.uuid4().hex,
        queue=queue,
        reason=reason[:2000],
        received_at=datetime.now(UTC),
        size=len(data),
        raw_b64=base64.b64encode(data[:MAX_RAW_BYTES]).decode("ascii"),
        task=task,
        task_id=task_id,
    )
    return store(client).put(record)
