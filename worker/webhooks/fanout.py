"""Fan-out: one event becomes one stored delivery per endpoint that takes its type.

Every delivery carries the same event (id = idempotency key, same body) and has its own attempts,
schedule and dead letter (``worker.webhooks.store``). The first target is attempted inline by the
``emit_webhook`` task, under the job's webhook task id (``<job_id>-webhook``: the one a producer
waits on, and the only one with a single endpoint); every other is put on the durable schedule,
due now, under ``<job_id>-webhook-<endpoint>``, and handed to its own ``deliver_webhook`` task by
the pump, so a slow endpoint never delays another. With no endpoint configured at all, the
``default`` delivery is stored (and dead-lettered for want of a URL, as before endpoints existed).

The job's W3C ``traceparent`` (``RegistrationJob.trace_context``) is kept with each delivery; each
attempt sends it on as the ``traceparent`` header (``worker.spans.outgoing_traceparent``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from hokusai_registry.contract import webhook_task_id
from hokusai_registry.settings import Settings
from hokusai_registry.webhook_policy import DEFAULT_ENDPOINT, configured_endpoints
from worker.webhooks.delivery_records import delivery_id
from worker.webhooks.event import WebhookEvent
from worker.webhooks.store import EventStore


def target_endpoints(settings: Settings, event_type: str) -> list[str]:
    """The names of the endpoints that take ``event_type``, in configured order.

    ``[default]`` when none is configured; empty when some are but none takes the type.
    Disabled endpoints are targets too: their deliveries are held, not dropped.
    """
    endpoints = configured_endpoints(settings)
    if not endpoints:
        return [DEFAULT_ENDPOINT]
    return [endpoint.name for endpoint in endpoints if endpoint.takes(event_type)]


def delivery_task_id(job_id: str, endpoint: str, *, first: bool) -> str:
    """The Celery task id a delivery's attempts run under."""
    return webhook_task_id(job_id) if first else f"{webhook_task_id(job_id)}-{endpoint}"


def store_deliveries(
    store: EventStore,
    event: WebhookEvent,
    targets: list[str],
    *,
    traceparent: str | None = None,
) -> tuple[str, list[str]]:
    """Store ``event``'s delivery to each of ``targets``; (the first's id, the others' ids).

    The others that have not started (new, or stored by a run that died before scheduling them)
    are put on the schedule due now; one already under way is left alone, so a task run twice
    starts no second chain of attempts.
    """
    ids: list[str] = []
    for index, name in enumerate(targets):
        created = store.save_delivery(
            event,
            name,
            task_id=delivery_task_id(event.job_id, name, first=index == 0),
            traceparent=traceparent,
            job_key=index == 0,
        )
        ident = delivery_id(event.event_id, name)
        ids.append(ident)
        if index == 0:
            first = store.get(ident)
            event = first.event if first is not None else event  # a re-run sends the first build's bytes
            continue
        record = store.get(ident)
        fresh = record is not None and record.state == "pending" and record.attempts == 0
        if created or (fresh and record is not None and record.deferred_until is None):
            store.defer(ident, datetime.now(UTC))
    return ids[0], ids[1:]
