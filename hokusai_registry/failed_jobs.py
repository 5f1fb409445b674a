"""The failed-jobs store: jobs whose retries ran out, kept in Redis until replayed or removed.

Redis has no dead-letter queue, so the worker writes a record here when a job fails for good,
and the CLI lists (``hokusai-registry jobs failed``), shows and removes them. Layout::

    hokusai:failed_jobs          hash  job_id -> FailureRecord as JSON
    hokusai:failed_jobs:by_time  zset  job_id -> failed_at (epoch seconds), for listing in order

Both keys are written in one MULTI/EXEC, so a record is in both or neither. A job that fails
again replaces its record (``attempts`` says how often it was tried). Imports only redis,
pydantic and the standard library, so producers and workers can both use it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hokusai_registry.errors import BrokerUnavailableError, ConfigurationError

logger = logging.getLogger(__name__)

FAILED_JOBS_KEY = "hokusai:failed_jobs"
FAILED_JOBS_INDEX_KEY = "hokusai:failed_jobs:by_time"
CONNECT_TIMEOUT_S = 3.0


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
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def connect(redis_url: str) -> redis.Redis:
    """A Redis client for the store, with short socket timeouts."""
    return redis.Redis.from_url(
        redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S * 2
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
    with _redis_boundary(client, f"recording the failure of job {record.job_id}"):
        pipe = client.pipeline(transaction=True)
        pipe.hset(FAILED_JOBS_KEY, record.job_id, record.model_dump_json())
        pipe.zadd(FAILED_JOBS_INDEX_KEY, {record.job_id: record.failed_at.timestamp()})
        pipe.execute()
    return record


def list_failures(client: redis.Redis, since: datetime | None = None) -> list[FailureRecord]:
    """Failure records, oldest first; only those that failed at or after ``since`` (naive = UTC)."""
    low: float | str = "-inf"
    if since is not None:
        low = (since.replace(tzinfo=UTC) if since.tzinfo is None else since).timestamp()
    with _redis_boundary(client, "listing failed jobs"):
        ids = client.zrangebyscore(FAILED_JOBS_INDEX_KEY, low, "+inf")
        raw = client.hmget(FAILED_JOBS_KEY, ids) if ids else []
    records = []
    for job_id, text in zip(ids, raw, strict=True):
        if text is None:  # removed between the two reads
            continue
        record = _parse(job_id, text)
        if record is not None:
            records.append(record)
    return records


def get_failure(client: redis.Redis, job_id: str) -> FailureRecord | None:
    """The failure record of ``job_id``, or None."""
    with _redis_boundary(client, f"reading the failure of job {job_id}"):
        text = client.hget(FAILED_JOBS_KEY, str(job_id))
    return None if text is None else _parse(str(job_id), text)


def remove_failure(client: redis.Redis, job_id: str) -> bool:
    """Delete the failure record of ``job_id``; True if there was one."""
    with _redis_boundary(client, f"removing the failure of job {job_id}"):
        pipe = client.pipeline(transaction=True)
        pipe.hdel(FAILED_JOBS_KEY, str(job_id))
        pipe.zrem(FAILED_JOBS_INDEX_KEY, str(job_id))
        removed, _ = pipe.execute()
    return bool(removed)


def _parse(job_id: bytes | str, text: bytes | str) -> FailureRecord | None:
    try:
        return FailureRecord.model_validate_json(text)
    except ValidationError as exc:
        name = job_id.decode() if isinstance(job_id, bytes) else job_id
        logger.warning("skipping unreadable failure record %s in %s: %s", name, FAILED_JOBS_KEY, exc)
        return None


@contextmanager
def _redis_boundary(client: redis.Redis, action: str) -> Iterator[None]:
    """Translate Redis connection failures into the error tree (naming host, never the password)."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        kwargs = client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
        if isinstance(exc, redis.exceptions.AuthenticationError):
            raise ConfigurationError(f"Redis at {where} refused the credentials in REDIS_URL") from exc
        raise BrokerUnavailableError(f"Redis at {where} is unreachable while {action}: {exc}") from exc
