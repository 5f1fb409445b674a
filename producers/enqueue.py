"""Enqueue registration jobs by task name, and read back how they went.

What a worker receives is ``producers.publish``'s (the wire layout is in its docstring). When Redis
stays unreachable for ``ENQUEUE_RETRY_S``, the job is spooled to the outbox (``producers.outbox``)
and sent later; its status reads ``SPOOLED`` until then.

Nothing here imports mlflow or the worker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from celery.states import READY_STATES

from hokusai_registry.contract import RegistrationJob, webhook_task_id
from hokusai_registry.errors import BrokerUnavailableError, InvalidInputError, RetryableError
from hokusai_registry.keys import ENQUEUED_KEY_PREFIX, enqueued_key
from hokusai_registry.outbox import SPOOLED
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.validation import validate_job
from producers import outbox
from producers.broker import call_with_retry, results_app
from producers.publish import publish_job
from producers.trace_context import current_traceparent

# ENQUEUED_KEY_PREFIX is re-exported for producers.staging: ``keys.enqueued_key(job_id)`` is what
# the producer enqueued (kept as long as results), so an id never enqueued reads ``UNKNOWN``.
__all__ = [
    "ENQUEUED_KEY_PREFIX",
    "SPOOLED",
    "UNKNOWN",
    "JobTimeoutError",
    "enqueue_registration",
    "job_status",
    "wait_for_job",
    "webhook_task_id",
]

#: Seconds between two polls of the result backend in :func:`wait_for_job` (grows to the max).
POLL_INTERVAL_S = 0.1
POLL_INTERVAL_MAX_S = 1.0


class JobTimeoutError(RetryableError, TimeoutError):
    """:func:`wait_for_job` reached its deadline before the job finished."""


def enqueue_registration(
    job_or_fields: RegistrationJob | Mapping[str, Any],
    *,
    settings: Settings | None = None,
) -> str:
    """Validate a registration job and publish it for the workers; return its job id.

    When Redis stays unreachable (or times out) for ``ENQUEUE_RETRY_S`` seconds, the job is
    spooled to the outbox (``HOKUSAI_OUTBOX_DIR``) and its id returned all the same: a warning
    says how it will be sent, and ``job_status`` reads ``SPOOLED`` until it is
    (``producers.outbox``). After a successful publish, jobs other calls spooled are sent too,
    within ``HOKUSAI_OUTBOX_FLUSH_S``.

    When the caller has an OpenTelemetry span and the job no ``traceparent`` of its own, the span's
    W3C ``traceparent`` is put into the job (``producers.trace_context``): the worker continues that
    trace, tags the MLflow run with it, and the webhook carries it to the marketplace.

    Args:
        job_or_fields: a :class:`RegistrationJob` or its fields (``job_id`` is generated when absent).
        settings: default: read from the environment (``REDIS_URL``, ``ENQUEUE_RETRY_S``, ``HOKUSAI_OUTBOX*``).
    Returns:
        The job id, which is also the Celery task id of the registration step.
    Raises:
        InvalidJobError: the job breaks the contract (the message names the fields); nothing is
            published or spooled.
        BrokerUnavailableError: Redis stayed unreachable for ``ENQUEUE_RETRY_S`` seconds and
            ``HOKUSAI_OUTBOX`` is false, or the outbox could not be written either.
        ConfigurationError: Redis refused the credentials in ``REDIS_URL`` (never spooled).

    Delivery is at least once: a retry after a connection lost mid-publish, or a spooled job
    published again after a flusher died, can publish the job twice under the same job id,
    which the worker treats as one registration.
    """
    settings = settings or get_settings()
    job = validate_job(job_or_fields, settings)
    if job.trace_context is None and (caller_span := current_traceparent()) is not None:
        job = job.model_copy(update={"traceparent": caller_span})
    job_id = str(job.job_id)
    payload = job.model_dump(mode="json")
    try:
        publish_job(payload, settings)
    except BrokerUnavailableError as exc:
        if not settings.hokusai_outbox:
            raise
        outbox.spool_job(payload, settings, cause=exc)
        return job_id
    outbox.flush_after_enqueue(settings, published=job_id)
    return job_id


def job_status(job_id: str | UUID, settings: Settings | None = None) -> dict[str, Any]:
    """The state of a job from the Celery result backend.

    Returns:
        ``{"job_id", "state", "result", "error", "date_done", "webhook": {"task_id", "state"}}``;
        ``state`` is a Celery state (``PENDING`` means queued), ``SPOOLED`` (waiting in this
        host's outbox, with ``outbox: {file, spooled_at}``; Redis is not read) or ``UNKNOWN`` (never
        enqueued by a producer, or enqueued longer ago than results are kept), ``result`` the
        registration result once ``SUCCESS``, ``error`` ``{"type", "message"}`` on
        ``FAILURE``/``RETRY``. When the registration fails, Celery marks the webhook step
        ``FAILURE`` too (it is never published).
    Raises:
        InvalidInputError: ``job_id`` is not a UUID.
        BrokerUnavailableError: Redis stayed unreachable.
    """
    settings = settings or get_settings()
    task_id = _check_job_id(job_id)
    spooled = outbox.spooled_status(settings, task_id)
    if spooled is not None:  # not in Redis yet: Redis is not asked (it may well be down)
        webhook = {"task_id": webhook_task_id(task_id), "state": "PENDING"}
        return {"job_id": task_id, "state": SPOOLED, "result": None, "error": None, "date_done": None,
                "outbox": spooled, "webhook": webhook}  # fmt: skip
    app = results_app(settings.redis_url)

    def read() -> dict[str, Any]:
        # cache=False: a finished result is cached per process, and `jobs retry` runs the job again
        status = {"job_id": task_id, **_describe(app.backend.get_task_meta(task_id, cache=False))}
        if status["state"] == "PENDING" and not app.backend.client.exists(enqueued_key(task_id)):
            status["state"] = UNKNOWN
        webhook_id = webhook_task_id(task_id)
        webhook_meta = app.backend.get_task_meta(webhook_id, cache=False)
        status["webhook"] = {"task_id": webhook_id, "state": str(webhook_meta.get("status", "PENDING"))}
        return status

    return call_with_retry(
        read, redis_url=settings.redis_url, retry_s=settings.enqueue_retry_s, action=f"reading job {task_id}"
    )


#: :func:`job_status` of an id no producer enqueued (while results are kept).
UNKNOWN = "UNKNOWN"


def wait_for_job(job_id: str | UUID, timeout_s: float, settings: Settings | None = None) -> dict[str, Any]:
    """Poll :func:`job_status` until the registration step finished (success or failure).

    Returns:
        The final :func:`job_status` (``state`` is ``SUCCESS``, ``FAILURE`` or ``REVOKED``).
    Raises:
        JobTimeoutError: not finished within ``timeout_s`` seconds (the message gives the last state).
        InvalidInputError: bad ``job_id`` or a negative ``timeout_s``.
        BrokerUnavailableError: Redis stayed unreachable.
    """
    if timeout_s < 0:
        raise InvalidInputError(f"timeout_s must be >= 0, got {timeout_s}")
    settings = settings or get_settings()
    deadline = time.monotonic() + timeout_s
    interval = POLL_INTERVAL_S
    while True:
        status = job_status(job_id, settings)
        if status["state"] in READY_STATES:
            return status
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeoutError(
                f"job {status['job_id']} did not finish within {timeout_s:g}s (last state: {status['state']})"
            )
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, POLL_INTERVAL_MAX_S)


def _check_job_id(job_id: str | UUID) -> str:
    try:
        return str(UUID(str(job_id)))
    except ValueError as exc:
        raise InvalidInputError(f"job_id must be a UUID, got {str(job_id)[:80]!r}") from exc


def _describe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """One consistent snapshot (a single backend read) as the status dict."""
    state = str(meta.get("status", "PENDING"))
    payload = meta.get("result")
    status: dict[str, Any] = {"state": state, "result": None, "error": None, "date_done": None}
    if isinstance(payload, BaseException):
        status["error"] = {"type": type(payload).__name__, "message": str(payload)}
    elif state == "SUCCESS":
        status["result"] = payload
    done = meta.get("date_done")
    if done is not None:
        status["date_done"] = done.isoformat() if hasattr(done, "isoformat") else str(done)
    return status
