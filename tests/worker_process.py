"""Real ``celery -A worker worker`` processes for tests about acks, crashes, retries, redelivery.

The process handling lives in ``devtools.devstack`` (the demo and benchmarks use it
too); tests add short timings so retries and redelivery happen within a test's patience.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools import devstack
from devtools.devstack import PROJECT_ROOT as ROOT
from devtools.devstack import StackError, wait_until

__all__ = ["FAST_TIMINGS", "ROOT", "StackError", "WorkerProcess", "wait_until"]

#: They satisfy the settings rule: visibility timeout > task time limit + the largest backoff cap.
FAST_TIMINGS = {
    "TASK_TIME_LIMIT_S": "20",
    "VISIBILITY_TIMEOUT_S": "30",
    "UNACKED_RESTORE_INTERVAL_S": "1",
    "REGISTRY_BACKOFF_BASE_S": "0.2",
    "REGISTRY_BACKOFF_MAX_S": "1",
    "WEBHOOK_BACKOFF_BASE_S": "0.2",
    "WEBHOOK_BACKOFF_MAX_S": "1",
}


class WorkerProcess(devstack.WorkerProcess):
    """A worker with test timings; ``env`` overrides them."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, **kwargs: Any) -> None:
        super().__init__({**FAST_TIMINGS, **env}, log_dir, **kwargs)
