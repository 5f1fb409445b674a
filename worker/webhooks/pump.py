"""The durable schedule's pump: deferred webhook retries that came due, handed to ``deliver_webhook`` tasks.

Retries that must wait longer than an in-memory countdown may (see ``VISIBILITY_TIMEOUT_S``) wait
in the event store's deferred schedule instead. Every worker's main process runs
:func:`pump_deferred_webhooks` every ``WEBHOOK_SCHEDULE_POLL_S`` (the ``DeferredWebhookPump``
bootstep of ``worker.celery_app``); each due event is claimed by exactly one of them. The task is
looked up in the app by name, so this module needs neither the tasks module nor the app's.
"""

from __future__ import annotations

from celery import Celery

from hokusai_registry.contract import DELIVER_WEBHOOK_TASK, webhook_task_id
from worker.webhooks.store import EventStore


def pump_deferred_webhooks(store: EventStore, app: Celery, *, lease_s: float, limit: int = 100) -> int:
    """Hand every deferred event that is due to a ``deliver_webhook`` task of ``app``; returns how many.

    The task reuses the task id the delivery's retries ran under (its stored ``task_id``; else the
    webhook task id of the event's job, ``<job_id>-webhook``, as for every delivery stored before
    endpoints existed), so the task Flower showed as RETRY while it waited ends SUCCESS or FAILURE
    with the delivery.
    Claims are leased for ``lease_s`` (the visibility timeout): an event claimed by a worker that
    dies before publishing its task comes due again then, like any message a dead worker held.
    """
    claimed = store.claim_due(limit=limit, lease_s=lease_s)
    if not claimed:
        return 0
    deliver_webhook = app.tasks[DELIVER_WEBHOOK_TASK]
    for event_id in claimed:
        record = store.get(event_id)
        task_id = None
        if record is not None:
            task_id = record.task_id or webhook_task_id(str(record.event.job_id))
        deliver_webhook.apply_async(args=[event_id], task_id=task_id)
    return len(claimed)
