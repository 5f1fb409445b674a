"""``hokusai-registry jobs status``: the producer's view of a job, plus its webhook's dead letter."""

from __future__ import annotations

from typing import Any

from hokusai_registry.redis_client import connect
from hokusai_registry.settings import Settings


def full_status(job_id: str, settings: Settings) -> dict[str, Any]:
    """``producers.job_status`` with the webhook shown as FAILURE when its event was dead-lettered.

    The webhook *task* of a dead letter may have ended SUCCESS (the event was kept, not lost);
    the dead-letter store is the truth about delivery, so it is read here.
    """
    from producers.enqueue import job_status
    from worker.webhooks.store import EventStore

    status = job_status(job_id, settings)
    store = EventStore(connect(settings.redis_url))
    letters = [letter for letter in store.dead_letters.list() if letter.job_id == status["job_id"]]
    if letters:
        letter = letters[-1]
        status["webhook"] = {
            **status["webhook"],
            "state": "FAILURE",
            "event_id": letter.event_id,
            "error": letter.reason,
            "dead_lettered_at": letter.dead_lettered_at.isoformat(),
            "replay": f"hokusai-registry webhooks replay {letter.event_id}",
        }
    return status
