"""The base class of every task: one failure-recording path, and the retry policy's decision applied.

A task that fails for good (a ``PermanentError``, a retryable one whose retries ran out, or an
unknown exception that is not transient by its cause chain) gets a failed-jobs record
(``hokusai-registry jobs failed`` / ``jobs retry``), written before Celery stores the FAILURE
state, so a job that reads FAILURE is always listed. Failures outside the task body (a killed
pool process, the hard time limit) are recorded by :meth:`HokusaiTask.on_failure`.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from hokusai_registry import failed_jobs
from hokusai_registry.contract import REGISTER_TASK
from hokusai_registry.errors import BrokerUnavailableError, WebhookDeadLetteredError
from worker.retry_policy import task_retry_delay

logger = logging.getLogger(__name__)


class HokusaiTask(Task):
    """Celery ``Task`` with the product's failure record; every task of ``worker.app`` uses it."""

    #: Write a failed-jobs record when the task fails for good.
    record_failures = True

    def retry_countdown(self, exc: BaseException, *, base_s: float, max_s: float) -> float | None:
        """Seconds until the next attempt, or None when ``exc`` is not retryable or retries ran out.

        The decision is the retry policy's (``worker.retry_policy.task_retry_delay``: never more
        than ``max_s``, which the settings keep below the visibility timeout).
        """
        delay = task_retry_delay(
            exc, retries=self.request.retries, max_retries=self.max_retries, base_s=base_s, max_s=max_s
        )
        if delay is not None:
            logger.warning("attempt %d failed (%s); retrying in %.1fs", self.request.retries + 1, exc, delay)
        return delay

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task body; an exception that ends the task is recorded before it propagates.

        Celery stores the FAILURE state and only then calls ``on_failure``: recording there left a
        moment in which ``jobs status`` said FAILURE and ``jobs failed`` did not list the job.
        (``self.run`` directly, as Celery calls a task without a ``__call__`` of its own: the
        worker has pushed this request already.)
        """
        try:
            return self.run(*args, **kwargs)
        except (Retry, Ignore, Reject):
            raise  # not a failure: retried, or deliberately left alone
        except Exception as exc:
            self._record_failure(exc, str(self.request.id), args)
            self.request.hokusai_failure_recorded = True
            raise

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Record a failure the task body did not see (its pool process was killed, the hard time limit)."""
        if not getattr(self.request, "hokusai_failure_recorded", False):
            self._record_failure(exc, task_id, args)

    def _record_failure(self, exc: BaseException, task_id: str, args: Any) -> None:
        """Write the failed-jobs record (never raising: a Redis outage is logged, the result still says FAILURE)."""
        if not self.record_failures or isinstance(exc, WebhookDeadLetteredError):
            return  # a dead-lettered event is kept (and replayed) by the event store, not here
        payload = args[0] if args else None
        job_id = str(task_id)  # a registration's task id is its job id; later steps keep their own
        if self.name == REGISTER_TASK and isinstance(payload, dict) and payload.get("job_id"):
            job_id = str(payload["job_id"])
        attempts = self.request.retries + 1
        from worker.clients import get_redis

        try:
            failed_jobs.record_failure(
                get_redis(),
                job_id=job_id,
                reason=str(exc) or type(exc).__name__,
                error_type=failed_jobs.error_type_of(exc),
                job=payload if isinstance(payload, dict) else {"raw": repr(payload)[:1000]},
                attempts=attempts,
                task=self.name,
            )
        except (redis.RedisError, BrokerUnavailableError):
            logger.exception("could not record the failure of job %s", job_id)
        logger.error("job %s failed permanently after %d attempt(s): %s", job_id, attempts, exc)
