"""``hokusai-registry jobs status``: the producer's view of a job, with its webhook's delivery from the event store.

A job still in the outbox reads ``SPOOLED``.
"""

from __future__ import annotations

from typing import Any

from hokusai_registry.settings import Settings

#: The webhook ``state`` that ``jobs status`` shows for an event in this event-store state.
_STATE_OF_DELIVERY = {"delivered": "SUCCESS", "dead": "FAILURE"}


def full_status(job_id: str, settings: Settings) -> dict[str, Any]:
    """``producers.job_status`` with the webhook's delivery read from the webhook event store.

    The event store is the durable record of delivery; the webhook *task*'s Celery state is not:
    a task that dead-lettered its event ended FAILURE and stays so after a replay delivered it,
    and a dead-lettered event's task may have ended SUCCESS. So a stored event decides the
    webhook's ``state``: delivered (by the task or a replay) is ``SUCCESS`` with ``delivered_at``;
    dead-lettered is ``FAILURE`` with the reason and the replay command; pending keeps the task's
    state (``RETRY`` while a retry waits). ``event_id`` and ``delivery`` (the store's state) are added.
    A job that waits in this host's outbox reads ``SPOOLED`` and nothing is asked of Redis (it has no event yet).
    """
    from producers.enqueue import SPOOLED, job_status
    from worker.webhooks.store import EventStore

    status = job_status(job_id, settings)
    if status["state"] == SPOOLED:
        return status
    record = EventStore.for_settings(settings).get_for_job(status["job_id"])
    if record is None:
        return status
    webhook: dict[str, Any] = {
        **status["webhook"],
        "event_id": record.event.event_id,
        "delivery": record.state,
        "attempts": record.attempts,
    }
    webhook["state"] = _STATE_OF_DELIVERY.get(record.state, webhook["state"])
    if record.state == "delivered":
        webhook["delivered_at"] = record.delivered_at.isoformat() if record.delivered_at else None
    elif record.state == "dead":
        webhook["error"] = record.dead_reason
        webhook["dead_lettered_at"] = record.dead_lettered_at.isoformat() if record.dead_lettered_at else None
        webhook["replay"] = f"hokusai-registry webhooks replay {record.event.event_id}"
    status["webhook"] = webhook
    return status
