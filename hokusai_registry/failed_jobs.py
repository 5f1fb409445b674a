"""The failed-jobs store: jobs whose retries ran out, kept in Redis until replayed or removed.

Redis has no dead-letter queue, so the worker writes a record here when a job fails for good
(one path: ``worker.tasks.HokusaiTask.on_failure``), and the CLI lists
(``hokusai-registry jobs failed``), shows (``jobs show-failed``), replays (``jobs retry``) and
removes them. It is a :class:`~hokusai_registry.records.RecordStore` (the layout shared with
dead letters and quarantined messages), under ``keys.FAILED_JOBS_KEY``::

    hokusai:failed_jobs          hash  job_id -> FailureRecord as JSON
    hokusai:failed_jobs:by_time  zset  job_id -> failed_at (epoch seconds), for listing in order

A job that fails again replaces its record (``attempts`` says how often it was tried).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hokusai_registry.keys import FAILED_JOBS_INDEX_KEY, FAILED_JOBS_KEY
from hokusai_registry.records import RecordStore, utc

__all__ = [
    "FAILED_JOBS_INDEX_KEY",
    "FAILED_JOBS_KEY",
    "FailureRecord",
    "error_type_of",
    "get_failure",
    "list_failures",
    "record_failure",
    "remove_failure",
    "store",
]


class FailureRecord(BaseModel):
    """One failed job, as stored (JSON) and as listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, max_length=200)
    reason: str = Field(description="What went wrong, for a human (the error message).")
    error_type: str = Field(min_length=1, description="Dotted name of the exception class.")
    job: dict[str, Any] | None = Field(default=None, description="The job (or step input) to replay.")
    failed_at: datetime = Field(description="When it failed for good, UTC.")
    attempts: int = Field(ge=0, description="How many times the step was tried.")
    task: str | None = Field(default=None, description="The Celery task name of the step that failed.")

    @field_validator("failed_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc(value)


def store(client: redis.Redis) -> RecordStore[FailureRecord]:
    """The failed-jobs store on ``client`` (build it with ``redis_client.connect``)."""
    return RecordStore(
        client, FAILED_JOBS_KEY, FailureRecord, id_field="job_id", time_field="failed_at", label="failed jobs"
    )


def error_type_of(exc: BaseException) -> str:
    """``module.QualName`` of an exception, for :attr:`FailureRecord.error_type`."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def record_failure(
    client: redis.Redis,
    job_id: str,
    *,
    reason: str,
    error_type: str,
    job: dict[str, Any] | None = None,
    attempts: int = 1,
    task: str | None = None,
    failed_at: datetime | None = None,
) -> FailureRecord:
    """Store (or replace) the failure record of ``job_id``; returns what was stored.

    Raises:
        pydantic.ValidationError: a field is invalid (e.g. negative ``attempts``).
        BrokerUnavailableError: Redis could not be reached.
    """
    record = FailureRecord(
        job_id=str(job_id),
        reason=reason,
        error_type=error_type,
        job=job,
        attempts=attempts,
        task=task,
        failed_at=failed_at or datetime.now(UTC),
    )
    return store(client).put(record)


def list_failures(client: redis.Redis, since: datetime | None = None) -> list[FailureRecord]:
    """Failure records, oldest first; only those that failed at or after ``since`` (naive = UTC)."""
    return store(client).list(since)


def get_failure(client: redis.Redis, job_id: str) -> FailureRecord | None:
    """The failure record of ``job_id``, or None."""
    return store(client).get(job_id)


def remove_failure(client: redis.Redis, job_id: str) -> bool:
    """Delete the failure record of ``job_id``; True if there was one."""
    return store(client).remove(job_id)
