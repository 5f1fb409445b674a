"""Prune this host's staging folder, so staged models do not pile up where no worker removes them.

``save_and_enqueue`` calls :func:`prune_staging` after each job it publishes. A worker that shares
the disk removes a job's folder itself once the version exists; a pipeline host whose workers do
not (or that keeps staging for jobs that failed) relies on this. Each ``<root>/<job_id>`` folder's
fate follows its job's state in Redis (:func:`staged_folder_fate`, a pure function):

* registered (``SUCCESS``): its version exists, the folder is removed;
* given up (a failed-jobs record, or ``FAILURE``/``REVOKED``) and not enqueued again since: kept
  for ``STAGING_RETENTION_S`` after it failed (``hokusai-registry jobs retry`` republishes the
  same ``artifact_uri``), then removed;
* queued, running or retrying: kept;
* spooled to the outbox (not in Redis yet): kept, whatever its age;
* unknown to Redis (never published, or its records expired): removed ``STAGING_RETENTION_S``
  after the folder was last written.

A scratch folder an interrupted save left (``.<job_id>.<hex>.tmp``) goes ``STAGING_RETENTION_S``
after it was last written. Anything else in the root is left alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import states

from hokusai_registry import failed_jobs, staging
from hokusai_registry.errors import HokusaiError
from hokusai_registry.records import utc
from hokusai_registry.settings import Settings, get_settings
from producers.broker import producer_redis, results_app
from producers.enqueue import ENQUEUED_KEY_PREFIX, UNKNOWN
from producers.outbox import spooled_job_ids

logger = logging.getLogger(__name__)

#: States of a registration a worker has taken and may still read the artifact of.
_RUNNING = frozenset({states.RECEIVED, states.STARTED, states.RETRY})
#: States of a registration that ran out of attempts (or was revoked): given up.
_GIVEN_UP = frozenset({states.FAILURE, states.REVOKED})


@dataclass(frozen=True)
class StagedJobState:
    """What Redis knows of a staged folder's job."""

    state: str  #: the registration's Celery state, or ``UNKNOWN`` (neither a result nor an enqueue record)
    enqueued_at: datetime | None = None  #: the latest enqueue (``jobs retry`` enqueues again)
    given_up_at: datetime | None = None  #: when it failed for good (failed-jobs record, else the FAILURE's time)


def staged_folder_fate(
    job: StagedJobState | None, *, written_at: datetime, now: datetime, retention_s: float
) -> str | None:
    """Why a staged folder may be removed now, or None to keep it.

    Args:
        job: its job's state; None for a scratch folder (no job was published from it).
        written_at: when the folder was last written (its mtime), UTC.
        now: the current time, UTC.
        retention_s: ``STAGING_RETENTION_S``.
    """
    if job is None:
        return "an interrupted save" if (now - written_at).total_seconds() >= retention_s else None
    if job.state == states.SUCCESS:
        return "its version exists"
    given_up = job.given_up_at
    if given_up is not None and (job.enqueued_at is None or job.enqueued_at <= given_up):
        if (now - given_up).total_seconds() >= retention_s:
            return f"its job was given up at {given_up.isoformat()}, more than STAGING_RETENTION_S ago"
        return None
    if job.enqueued_at is not None or job.state in _RUNNING:
        return None  # queued, running or retrying: a worker still needs it
    if (now - written_at).total_seconds() >= retention_s:
        return "Redis does not know its job, and it was written more than STAGING_RETENTION_S ago"
    return None


def read_job_state(job_id: str, settings: Settings) -> StagedJobState:
    """The registration state of ``job_id`` from the result backend, its enqueue record and failed-jobs record.

    Raises:
        BrokerUnavailableError: Redis could not be reached (also ``redis.RedisError`` from the backend).
    """
    meta = results_app(settings.redis_url).backend.get_task_meta(job_id, cache=False)
    client = producer_redis(settings.redis_url)
    marker = client.get(ENQUEUED_KEY_PREFIX + job_id)
    failure = failed_jobs.get_failure(client, job_id)
    state = str(meta.get("status", states.PENDING))
    enqueued_at = _time(json.loads(marker).get("enqueued_at")) if marker else None
    if state == states.PENDING and marker is None:
        state = UNKNOWN
    given_up_at = failure.failed_at if failure is not None else None
    if given_up_at is None and state in _GIVEN_UP:
        given_up_at = _time(meta.get("date_done"))
    return StagedJobState(state=state, enqueued_at=enqueued_at, given_up_at=given_up_at)


def prune_staging(
    settings: Settings | None = None,
    *,
    staging_dir: str | Path | None = None,
    keep: Collection[str] = (),
    now: datetime | None = None,
) -> list[Path]:
    """Remove the staged folders no job needs any more (the rules above); return what was removed.

    Never raises: when Redis cannot be read, nothing is removed and a warning says why.

    Args:
        settings: default: read from the environment (``REDIS_URL``, ``STAGING_RETENTION_S``).
        staging_dir: default: ``settings.staging_dir`` (``$HOKUSAI_HOME/staging``).
        keep: job ids whose folders stay whatever their state (the job just published); the
            jobs in the outbox (``settings.outbox_dir``) are kept too.
        now: the current time (default: now, UTC).
    """
    settings = settings or get_settings()
    root = Path(staging_dir).expanduser().resolve() if staging_dir is not None else settings.staging_dir
    now = utc(now) if now is not None else datetime.now(UTC)
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    try:
        keep = {*keep, *spooled_job_ids(settings)}
    except OSError as exc:
        logger.warning(
            "not pruning the staging folder %s: cannot list the outbox %s: %s", root, settings.outbox_dir, exc
        )
        return []
    removed: list[Path] = []
    for folder in entries:
        job_id = staging.job_id_of(folder)
        if (job_id is None and not staging.is_scratch(folder)) or job_id in keep or not folder.is_dir():
            continue
        try:
            job = read_job_state(job_id, settings) if job_id is not None else None
            written_at = datetime.fromtimestamp(folder.stat().st_mtime, UTC)
        except (HokusaiError, redis.RedisError) as exc:
            logger.warning("not pruning the staging folder %s: cannot read job states from Redis: %s", root, exc)
            return removed
        except FileNotFoundError:  # a worker removed it meanwhile
            continue
        reason = staged_folder_fate(job, written_at=written_at, now=now, retention_s=settings.staging_retention_s)
        if reason is None:
            continue
        try:
            if staging.remove_folder(folder):
                removed.append(folder)
                logger.info("removed staged model folder %s: %s", folder, reason)
        except OSError as exc:
            logger.warning("could not remove staged model folder %s: %s", folder, exc)
    return removed


def _time(value: Any) -> datetime | None:
    """A stored time (ISO-8601 text or a datetime; naive = UTC) as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc(value)
    try:
        return utc(datetime.fromisoformat(str(value)))
    except ValueError:
        return None
