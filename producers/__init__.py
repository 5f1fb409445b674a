"""The producer side of hokusai-registry: what a training pipeline installs.

``enqueue_registration`` validates a :class:`~hokusai_registry.contract.RegistrationJob` and
publishes it by task name; ``job_status`` / ``wait_for_job`` read how it went;
``save_and_enqueue`` saves a model object in MLflow format first (needs mlflow). A job Redis cannot
take within ``ENQUEUE_RETRY_S`` waits in the outbox folder until it is sent (``producers.outbox``).
Everything is loaded on first use, so ``import producers`` imports neither mlflow nor the worker.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producers.enqueue import enqueue_registration, job_status, wait_for_job
    from producers.pipeline import save_and_enqueue

__all__ = ["enqueue_registration", "job_status", "save_and_enqueue", "wait_for_job"]

_HOMES = {
    "enqueue_registration": "producers.enqueue",
    "job_status": "producers.enqueue",
    "wait_for_job": "producers.enqueue",
    "save_and_enqueue": "producers.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'producers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
