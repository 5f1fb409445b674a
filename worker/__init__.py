"""The registration worker: ``celery -A worker worker`` starts it.

``worker.registration.registry.HokusaiModelRegistry`` is the in-process registry that training code calls
directly and that every worker task calls. Attributes are loaded on first use so that
``import worker`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HokusaiModelRegistry", "app"]


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        from worker.celery_app import app

        return app
    if name == "HokusaiModelRegistry":
        from worker.registration.registry import HokusaiModelRegistry

        return HokusaiModelRegistry
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
