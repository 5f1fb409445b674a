"""Real ``celery -A worker worker`` processes for tests about acks, crashes, retries, redelivery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE

ROOT = Path(__file__).resolve().parents[1]

#: Short timings so retries and redelivery happen within a test's patience. They satisfy the
#: settings rule: visibility timeout > task time limit + the largest backoff cap.
FAST_TIMINGS = {
    "TASK_TIME_LIMIT_S": "20",
    "VISIBILITY_TIMEOUT_S": "30",
    "UNACKED_RESTORE_INTERVAL_S": "1",
    "REGISTRY_BACKOFF_BASE_S": "0.2",
    "REGISTRY_BACKOFF_MAX_S": "1",
    "WEBHOOK_BACKOFF_BASE_S": "0.2",
    "WEBHOOK_BACKOFF_MAX_S": "1",
}


def wait_until(predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(interval_s)


class WorkerProcess:
    """One ``celery -A worker worker`` in its own process group, logging to a file."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        concurrency: int = 1,
        queues: tuple[str, ...] = (REGISTRATION_QUEUE, WEBHOOK_QUEUE),
        pool: str = "prefork",
    ) -> None:
        self.env = {**os.environ, **FAST_TIMINGS, **env}
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.log_path = log_dir / f"{self.name}.log"
        self.concurrency = concurrency
        self.queues = queues
        self.pool = pool
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 90) -> "WorkerProcess":
        command = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "--loglevel", "INFO",
            "--queues", ",".join(self.queues),
            "--concurrency", str(self.concurrency),
            "--pool", self.pool,
            "--hostname", f"{self.name}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_until(self._ready, timeout_s=ready_timeout_s, what=f"worker {self.name} to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
        return " ready." in self.log_text()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a host crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> "WorkerProcess":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
