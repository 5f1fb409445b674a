"""``hokusai-registry jobs retry``: publish a failed job again, with the same job (task) id."""

from __future__ import annotations

from hokusai_registry import failed_jobs
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, WEBHOOK_QUEUE
from hokusai_registry.errors import InvalidInputError, NotFoundError
from hokusai_registry.redis_client import connect
from hokusai_registry.settings import Settings


def retry_failed_job(job_id: str, settings: Settings) -> str:
    """Republish the failed job ``job_id``; remove its record once published; return the task id.

    A registration goes through ``enqueue_registration`` again (validated, chained to its
    webhook, same job id); another step is sent to its task with its recorded input.

    Raises:
        NotFoundError: no failure record for ``job_id``.
        InvalidInputError: a failure record without a replayable input.
        BrokerUnavailableError: Redis stayed unreachable (the record is kept).
    """
    from producers.broker import call_with_retry, publisher_app
    from producers.enqueue import enqueue_registration

    client = connect(settings.redis_url)
    record = failed_jobs.get_failure(client, job_id)
    if record is None:
        raise NotFoundError(f"no failed job {job_id!r} (see 'hokusai-registry jobs failed')")
    if record.job is None or ("raw" in record.job and len(record.job) == 1):
        raise InvalidInputError(f"failed job {job_id!r} has no replayable input (it was not a JSON object)")
    if record.task in (None, REGISTER_TASK):
        task_id = enqueue_registration(record.job, settings=settings)
    else:
        task_name = record.task
        queue = REGISTRATION_QUEUE if task_name == REGISTER_TASK else WEBHOOK_QUEUE
        app = publisher_app(settings.redis_url)
        call_with_retry(
            lambda: app.send_task(task_name, args=[record.job], task_id=record.job_id, queue=queue),
            redis_url=settings.redis_url,
            retry_s=settings.enqueue_retry_s,
            action=f"republishing {job_id}",
        )
        task_id = record.job_id
    failed_jobs.remove_failure(client, job_id)
    return task_id
