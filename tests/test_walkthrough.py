"""An operator's walk-through from a fresh clone, with the documented commands and nothing else.

A clean copy of the checkout (``git ls-files``), a fresh virtualenv with ``pip install ".[server]"``
(the session's :func:`fresh_install`, shared with the docs' samples), then what README.md and docs/
tell an operator to do: start a worker (``celery -A worker worker --loglevel INFO``), ask it
(``celery -A worker inspect ping``), enqueue (``python examples/train_pipeline.py``, the example
pipeline), read the job (``hokusai-registry jobs status``), scrape the worker's metrics
(``METRICS_PORT``), replay the webhook that could not be delivered (``hokusai-registry webhooks
replay --all`` once the receiver, ``python -m devtools.receiver``, is up) and run the doctor with Redis
down. Every command is a real process run by bash in the copy, with the machine's own environment
(:func:`tests.doc_samples.sample_environment`) plus only documented settings; Redis is a
``redis-server`` of the test's own, so it can be stopped for the doctor.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devstack import free_port, log_tail, private_redis_server, stop_process_group, wait_until
from tests.doc_samples import FreshInstall, sample_environment

#: How long the doctor may take with Redis down: docs/operations.md says "about 3 s per service that does
#: not answer" (here one, Redis, whose readers are then not tried), plus the command's start-up.
DOCTOR_REDIS_DOWN_MAX_S = 5.0


class Operator:
    """Runs commands as an operator's shell would: bash, in the clone, with the exported settings."""

    def __init__(self, checkout: Path, env: dict[str, str], log_dir: Path) -> None:
        self.checkout, self.env, self.log_dir = checkout, env, log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, command: str, *, timeout_s: float = 180, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", command], cwd=self.checkout, env={**self.env, **extra_env},
                              capture_output=True, text=True, timeout=timeout_s)  # fmt: skip

    def start(self, command: str, ready: str, *, timeout_s: float = 120) -> Path:
        """Start a command that runs until stopped; wait until its log matches ``ready``."""
        log = self.log_dir / f"{len(self.started)}-{command.split()[0]}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.checkout, env=self.env,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.started.append((process, log))

        def is_ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"`{command}` exited {process.returncode}:\n{log_tail(log)}")
            return re.search(ready, log.read_text(errors="replace")) is not None

        wait_until(is_ready, timeout_s=timeout_s, what=f"`{command}` to be ready")
        return log

    def stop_all(self) -> None:
        for process, _ in reversed(self.started):
            stop_process_group(process, timeout_s=30)


@pytest.fixture
def operator(fresh_install: FreshInstall, tmp_path: Path) -> Iterator[Operator]:
    logs = tmp_path / "logs"
    logs.mkdir()
    person = Operator(fresh_install.checkout, sample_environment(fresh_install.bin), logs)
    try:
        yield person
    finally:
        person.stop_all()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def metric(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


@pytest.mark.slow
def test_an_operator_follows_the_docs_from_a_fresh_clone(operator: Operator, tmp_path: Path) -> None:
    metrics_port, receiver_port = free_port(), free_port()
    with private_redis_server(tmp_path / "redis") as redis_url:
        secret = operator.run("hokusai-registry webhooks new-secret")
        assert secret.returncode == 0, secret.stderr
        operator.env.update(  # what the operator exports, every one a documented setting
            REDIS_URL=redis_url,
            METRICS_PORT=str(metrics_port),
            WEBHOOK_URL=f"http://127.0.0.1:{receiver_port}/webhooks/model-registered",
            WEBHOOK_SECRET=secret.stdout.strip(),
            WEBHOOK_ALLOW_HTTP="true",
            WEBHOOK_MAX_ATTEMPTS="1",  # the receiver is not up yet: the event is dead-lettered at once
        )

        worker_log = operator.start("celery -A worker worker --loglevel INFO", r"ready\.")

        ping = operator.run("celery -A worker inspect ping")
        assert ping.returncode == 0 and "pong" in ping.stdout, f"inspect ping:\n{ping.stdout}{ping.stderr}"

        enqueued = operator.run("python examples/train_pipeline.py")
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = json.loads(enqueued.stdout.strip().splitlines()[-1])["job_id"]

        def job_state() -> dict[str, object] | None:
            status = operator.run(f"hokusai-registry jobs status {job_id}")
            assert status.returncode == 0, f"jobs status exited {status.returncode}: {status.stderr}"
            state = json.loads(status.stdout)
            done = state["state"] in {"SUCCESS", "FAILURE"} and state["webhook"]["state"] in {"SUCCESS", "FAILURE"}
            return state if done else None

        state = wait_until(job_state, timeout_s=120, interval_s=1, what=f"job {job_id}")
        assert state["state"] == "SUCCESS", f"{state}\n{log_tail(worker_log)}"

        text = scrape(metrics_port)
        assert metric(text, "hokusai_registrations_total", '{outcome="success"}') == 1.0, text
        assert metric(text, "hokusai_webhook_dead_letters") == 1.0, text
        assert metric(text, "hokusai_metrics_redis_up") == 1.0, text

        failed = operator.run("hokusai-registry webhooks failed")
        assert failed.returncode == 0 and len(json.loads(failed.stdout)) == 1, failed.stdout + failed.stderr

        receiver_log = operator.start(f"python -m devtools.receiver --port {receiver_port}", r"listening on")
        replay = operator.run("hokusai-registry webhooks replay --all")
        assert replay.returncode == 0, f"replay exited {replay.returncode}:\n{replay.stdout}{replay.stderr}"
        assert re.search(r"received \S+ \(signatures True/\S+, duplicate False\): answering 200",
                         receiver_log.read_text()), log_tail(receiver_log)  # fmt: skip
        after = operator.run("hokusai-registry webhooks failed")
        assert after.returncode == 0 and json.loads(after.stdout) == [], after.stdout
        assert metric(scrape(metrics_port), "hokusai_webhook_dead_letters") == 0.0

    # Redis is gone now (the context stopped it); the worker is still running.
    started = time.monotonic()
    doctor = operator.run("hokusai-registry doctor", timeout_s=120)
    took_s = time.monotonic() - started
    report = doctor.stdout + doctor.stderr
    assert doctor.returncode == 1, f"doctor with Redis down exited {doctor.returncode}:\n{report}"
    assert re.search(r"redis.*does not answer", report, re.IGNORECASE), report
    assert "start Redis" in report, report
    assert took_s < DOCTOR_REDIS_DOWN_MAX_S, f"doctor took {took_s:.1f} s with Redis down:\n{report}"
