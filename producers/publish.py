"""Publish one validated registration job for the workers: the one way a job reaches Redis.

What a worker receives (Celery message protocol 2, JSON):

* task ``REGISTER_TASK`` on queue ``REGISTRATION_QUEUE``, task id = the job id,
  ``args = [job.model_dump(mode="json")]``, no kwargs;
* chained to ``WEBHOOK_TASK`` on ``WEBHOOK_QUEUE`` with task id ``webhook_task_id(job_id)``,
  which Celery calls with the registration's return value as its only argument.

``producers.enqueue`` publishes new jobs with it and ``producers.outbox`` the jobs it spooled, so
both send exactly the same message. Nothing here imports mlflow or the worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from celery import chain

from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, WEBHOOK_QUEUE, WEBHOOK_TASK, webhook_task_id
from hokusai_registry.keys import enqueued_key
from hokusai_registry.settings import Settings
from producers.broker import call_with_retry, producer_redis, publisher_app


def publish_job(payload: Mapping[str, Any], settings: Settings, *, retry_s: float | None = None) -> None:
    """Record ``payload``'s job as enqueued and publish it chained to its webhook, retrying Redis blips.

    Args:
        payload: a validated job as JSON (``RegistrationJob.model_dump(mode="json")``), sent as is.
        settings: ``REDIS_URL`` and ``RESULT_EXPIRES_S``.
        retry_s: the retry budget; default ``ENQUEUE_RETRY_S`` (0: one attempt).
    Raises:
        BrokerUnavailableError: Redis stayed unreachable (or timed out) for the budget.
        ConfigurationError: Redis refused the credentials in ``REDIS_URL``.

    Delivery is at least once: a retry after a connection lost mid-publish can publish the job
    twice under the same job id, which the worker treats as one registration.
    """
    job_id = str(payload["job_id"])
    app = publisher_app(settings.redis_url)
    client = producer_redis(settings.redis_url)
    args = [dict(payload)]

    def publish() -> None:  # fresh signatures per attempt: apply_async mutates their options
        # Recorded first: a job that is published is always known (a record without a message
        # only happens when publishing failed, and then the caller gets the error).
        enqueued = {"job_id": job_id, "enqueued_at": datetime.now(UTC).isoformat()}
        client.set(enqueued_key(job_id), json.dumps(enqueued), ex=settings.result_expires_s)
        register = app.signature(REGISTER_TASK, args=args, task_id=job_id, queue=REGISTRATION_QUEUE)
        webhook = app.signature(WEBHOOK_TASK, task_id=webhook_task_id(job_id), queue=WEBHOOK_QUEUE)
        chain(register, webhook, app=app).apply_async()

    call_with_retry(
        publish,
        redis_url=settings.redis_url,
        retry_s=settings.enqueue_retry_s if retry_s is None else retry_s,
        action=f"enqueueing job {job_id}",
    )
