"""Celery tasks: thin wrappers that validate input, call plain functions, and decide retries.

Retry policy, written once (``worker.retry_policy``, applied by ``worker.base_task.HokusaiTask``):
an error that is retryable by the error tree or its cause chain → retry with exponential backoff
and jitter up to a limit; anything else, or retries used up → the task fails and
``HokusaiTask.on_failure`` records it. Nothing is dropped silently. The webhook tasks count each
HTTP attempt in the metrics (``worker.metrics``) through delivery's ``on_attempt``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Task
from celery.exceptions import Retry

from hokusai_registry import log
from hokusai_registry.contract import DELIVER_WEBHOOK_TASK, REGISTER_TASK, WEBHOOK_TASK
from hokusai_registry.errors import (
    ArtifactNotFoundError,
    RetryableError,
    WebhookDeadLetteredError,
    WebhookDeliveryError,
)
from hokusai_registry.keys import job_lock_key
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.validation import validate_job
from worker import spans
from worker.base_task import HokusaiTask
from worker.celery_app import app
from worker.clients import get_event_store, get_http_client, get_redis, get_registry
from worker.metrics import observe_webhook_attempt, observe_webhook_settled
from worker.registration.job import job_of_result, register_job, registered_result
from worker.webhooks import delivery, fanout, mlflow_record
from worker.webhooks import event as events
from worker.webhooks.delivery_records import endpoint_of_delivery
from worker.webhooks.pump import pump_deferred_webhooks

logger = logging.getLogger(__name__)


@contextmanager
def job_lock(job_id: str, settings: Settings) -> Iterator[None]:
    """Hold the per-job lock so two deliveries of one job never register concurrently.

    The lock expires with the task time limit, so a SIGKILLed holder cannot block a redelivery.
    """
    lock = get_redis().lock(
        job_lock_key(job_id),
        timeout=settings.task_time_limit_s,
        blocking_timeout=max(1, settings.task_time_limit_s - 5),
    )
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        raise RetryableError(f"cannot take the job lock in Redis: {exc}") from exc
    if not acquired:
        raise RetryableError(f"job {job_id} is still being processed by another worker")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            logger.warning("job lock for %s expired before release", job_id)


@app.task(name=REGISTER_TASK, bind=True, max_retries=get_settings().registry_max_retries)
def register_model(self: HokusaiTask, job: dict[str, Any]) -> dict[str, Any]:
    """Register one job's model; the result (with the ModelVersion) feeds the webhook task.

    Retryable by the error tree and the cause chain (``HokusaiTask.retry_countdown``); a job
    that fails for good is recorded by ``HokusaiTask.on_failure``. A job whose staged folder is
    gone because its version exists (a second delivery) returns that version's result.
    """
    settings = get_settings()
    job_id = str(job.get("job_id") or self.request.id) if isinstance(job, dict) else str(self.request.id)
    try:
        try:
            parsed = validate_job(job, settings)  # again on this side: producers may be older, or foreign
        except ArtifactNotFoundError:
            found = registered_result(validate_job(job, settings, check_artifact=False), get_registry())
            if found is None:
                raise
            result = found
        else:
            span = spans.continued(spans.REGISTER_SPAN, parsed.trace_context, {spans.JOB_ID_ATTRIBUTE: job_id})
            with job_lock(job_id, settings), span:
                result = register_job(parsed, get_registry(), settings, redis_client=get_redis())
    except Exception as exc:
        countdown = self.retry_countdown(
            exc, base_s=settings.registry_backoff_base_s, max_s=settings.registry_backoff_max_s
        )
        if countdown is None:
            raise
        raise self.retry(exc=exc, countdown=countdown) from exc
    log.bind(model_uuid=result["model_uuid"], version=result["version"])
    return result


@app.task(name=WEBHOOK_TASK, bind=True, max_retries=None)
def emit_webhook(self: Task, result: dict[str, Any]) -> dict[str, Any]:
    """Build the marketplace event of a registration once, store it, and send it.

    One delivery per endpoint that takes the event (``worker.webhooks.fanout``): the first is
    attempted here, the others by their own ``deliver_webhook`` tasks. Attempts are counted in the
    event store (``WEBHOOK_RETRY_SCHEDULE``), not by Celery, so the count survives crashes and the
    durable schedule.
    """
    job = job_of_result(result)
    summary = {"job_id": str(job.job_id), "model_name": result["model_name"], "version": result["version"]}
    reason = events.skip_reason(job)
    if reason is not None:
        logger.info("no webhook for %s/%s: %s", result["model_name"], result["version"], reason)
        return {**summary, "status": "skipped", "reason": reason}
    settings = get_settings()
    targets = fanout.target_endpoints(settings, events.EVENT_TYPE)
    if not targets:
        reason = f"no webhook endpoint takes {events.EVENT_TYPE} events"
        logger.info("no webhook for %s/%s: %s", result["model_name"], result["version"], reason)
        return {**summary, "status": "skipped", "reason": reason}
    event = events.build_event(result, job, now=mlflow_record.event_time(result))  # what reconcile rebuilds
    log.bind(event_id=event.event_id)
    store = get_event_store()
    with spans.continued(spans.WEBHOOK_SPAN, job.trace_context, _span_attributes(event.job_id, event.event_id)):
        # a re-run finds the first run's deliveries; the other endpoints' go to their own tasks at once
        first, others = fanout.store_deliveries(store, event, targets, traceparent=job.trace_context)
        if others:
            pump_deferred_webhooks(store, app, lease_s=settings.visibility_timeout_s)
        return {**summary, **_send_event(self, first)}


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, max_retries=None)
def deliver_webhook(self: Task, event_id: str) -> dict[str, Any]:
    """Send an event that is already stored (a deferred retry that came due)."""
    record = get_event_store().get(event_id)
    if record is None:
        return _send_event(self, event_id)
    log.bind(job_id=record.event.job_id, version=record.event.version)
    with spans.continued(spans.WEBHOOK_SPAN, record.traceparent, _span_attributes(record.event.job_id, event_id)):
        return _send_event(self, event_id)


def _span_attributes(job_id: str, event_id: str) -> dict[str, str]:
    return {spans.JOB_ID_ATTRIBUTE: job_id, spans.EVENT_ID_ATTRIBUTE: event_id}


def _tag_delivered(event_id: str, endpoint: str) -> None:
    """Tag the version as delivered to ``endpoint``; never fails the delivery, which has happened.

    MLflow (or Redis) may be away right now: the tag is then missing, and ``webhooks reconcile``
    writes it later from the event store's record, or leaves the event alone while Redis holds it.
    """
    try:
        record = get_event_store().get(event_id)
        registry = get_registry() if record is not None else None
    except Exception as exc:  # the registry's store, or Redis, is unreachable: only the tag is lost
        logger.warning("webhook %s delivered; its version could not be tagged as delivered: %s", event_id, exc)
        return
    if record is not None and registry is not None:
        at = record.delivered_at or datetime.now(UTC)
        mlflow_record.record_delivery(registry, record.event.model_name, record.event.version, endpoint, at)


def _send_event(task: Task, event_id: str) -> dict[str, Any]:
    """One attempt of a stored event; the task's Celery state says what became of it.

    Delivered (or nothing left to send): SUCCESS. An in-memory retry: RETRY, then the next run.
    Deferred to the durable schedule: RETRY, with nothing re-sent by Celery; the pump later
    publishes ``deliver_webhook`` under this same task id, which ends in the final state.
    Dead-lettered: FAILURE (``WebhookDeadLetteredError`` naming the event and the reason).
    """
    log.bind(event_id=event_id)
    endpoint = endpoint_of_delivery(event_id)
    store, settings = get_event_store(), get_settings()
    outcome = delivery.send_stored_event(
        store,
        event_id,
        settings=settings,
        client=get_http_client(),
        on_attempt=lambda status_code: observe_webhook_attempt(status_code, endpoint=endpoint),
    )
    if outcome.woke_next:  # the model's next version waited behind this one: send it now, not at the next poll
        pump_deferred_webhooks(store, app, lease_s=settings.visibility_timeout_s)
    if outcome.status == "retry":
        assert outcome.countdown_s is not None
        logger.warning("webhook attempt %d failed (%s); retrying in %.1fs", outcome.attempt, outcome.reason,
                       outcome.countdown_s)  # fmt: skip
        raise task.retry(countdown=outcome.countdown_s)
    if outcome.status in {"deferred", "waiting"}:
        assert outcome.due_at is not None
        message = (
            f"webhook event {event_id} attempt {outcome.attempt} failed ({outcome.reason}); "
            f"waiting in the durable schedule until {outcome.due_at.isoformat()}"
            if outcome.status == "deferred"
            else f"webhook event {event_id} {outcome.reason}; waiting until {outcome.due_at.isoformat()}"
        )
        logger.warning("%s", message)
        raise Retry(message, exc=WebhookDeliveryError(message), when=outcome.due_at)
    if outcome.status == "dead_lettered":
        message = (
            f"webhook event {event_id} dead-lettered after {outcome.attempt} attempt(s): {outcome.reason}; "
            f"replay it with: hokusai-registry webhooks replay {event_id}"
        )
        logger.error("%s", message)
        observe_webhook_settled("dead_lettered", endpoint=endpoint)
        raise WebhookDeadLetteredError(message)
    if outcome.status == "delivered":
        observe_webhook_settled("delivered", endpoint=endpoint)
        _tag_delivered(event_id, endpoint)
    logger.info("webhook %s: %s after %d attempt(s)", event_id, outcome.status, outcome.attempt)
    return outcome.as_dict()
