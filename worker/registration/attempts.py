"""Which delivery of a job is the first: a per-job marker in Redis, set when an attempt starts.

The idempotency look-ups of :func:`worker.registration.job.register_job` (a version tagged with
the job id? a logged model a crashed attempt left?) cost two requests to the tracking server, and
only a job that was attempted before can find anything. So each attempt first sets
``hokusai:job:started:<job_id>`` (``keys.job_started_key``, here ``marker_key``) with ``SET NX``,
under the per-job lock: when the key was absent, no earlier attempt started, and the look-ups are
skipped. The marker is written *before* any MLflow call, so a crash (SIGKILL, lost worker) at any
later point leaves it behind and the redelivered attempt searches.

The marker expires after ``RESULT_EXPIRES_S`` (like the job's task result): a producer sending
the same ``job_id`` again later than that gets a second version. Redis must keep its data
(persistence on, no eviction), as it must for the queues anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from hokusai_registry.keys import job_started_key as marker_key
from hokusai_registry.redis_client import describe, redis_boundary

__all__ = ["begin_attempt", "marker_key"]


def begin_attempt(client: redis.Redis, job_id: str, *, ttl_s: int) -> bool:
    """Record that an attempt of ``job_id`` starts; True when it is the first one ever.

    Raises:
        BrokerUnavailableError: Redis could not be reached (retryable: nothing was done yet).
    """
    with redis_boundary(describe(client), f"marking the start of job {job_id}"):
        created = client.set(marker_key(job_id), datetime.now(UTC).isoformat(), nx=True, ex=ttl_s)
    return bool(created)
