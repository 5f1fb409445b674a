"""Flower, as operators run it: a real `celery -A worker flower` with basic auth, watching a real job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools.builders import WALLET
from devtools.devstack import free_port, log_tail, stop_process_group
from devtools.receiver import ScriptedResponse, WebhookReceiver
from hokusai_registry import quarantine
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, WEBHOOK_QUEUE, WEBHOOK_TASK
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from tests.queue_helpers import client_app, job_fields, save_model_dir
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

AUTH = ("operator", "flower-test-password")


@contextmanager
def running_flower(redis_url: str, log_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A real ``celery -A worker flower`` on a free loopback port; yield its URL (``env`` adds variables)."""
    port = free_port()
    log_path = log_dir / f"flower-{port}.log"
    # As docker-compose.yml runs it: the login comes from FLOWER_BASIC_AUTH, never from an argument.
    command = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"]
    full_env = {**os.environ, "REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log_tail(log_path)
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout_s=60, what="flower to answer")
        yield url
    finally:
        stop_process_group(process, timeout_s=10)


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    with running_flower(redis_url, tmp_path) as url:
        yield url


def flower_task(url: str, task_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/api/task/info/{task_id}", auth=AUTH, timeout=5)
    return response.json() if response.status_code == 200 else None


def test_flower_shows_register_and_webhook_tasks_without_secrets(
    flower: str, worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    with WebhookReceiver(SECRET) as receiver:
        env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
        with WorkerProcess(env, tmp_path):
            job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
            webhook_id = webhook_task_id(job_id)
            wait_until(lambda: (t := flower_task(flower, webhook_id)) and t["state"] == "SUCCESS",
                       timeout_s=90, what="flower to see the webhook task succeed")  # fmt: skip
            register = flower_task(flower, job_id)
            webhook = flower_task(flower, webhook_id)
            listing = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5)
            workers = httpx.get(f"{flower}/api/workers", auth=AUTH, timeout=10)
            by_name = {
                name: httpx.get(f"{flower}/api/tasks", params={"taskname": name}, auth=AUTH, timeout=5).json()
                for name in (REGISTER_TASK, WEBHOOK_TASK)
            }

    assert register is not None and register["name"] == REGISTER_TASK and register["state"] == "SUCCESS"
    assert webhook is not None and webhook["name"] == WEBHOOK_TASK and webhook["state"] == "SUCCESS"
    assert job_id in by_name[REGISTER_TASK] and webhook_id in by_name[WEBHOOK_TASK]
    assert job_id in register["args"], "Flower shows task arguments: the job is there, so secrets must not be"
    shown = json.dumps([register, webhook]) + listing.text + workers.text
    assert SECRET.removeprefix("whsec_") not in shown


def flower_state(url: str, task_id: str, state: str) -> dict[str, Any] | None:
    task = flower_task(url, task_id)
    return task if task is not None and task["state"] == state else None


def test_flower_shows_failures_and_deferred_retries_as_what_they_are(
    flower: str, worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path, redis_url: str
) -> None:
    model_dir = save_model_dir(sk_model, staging)
    with WebhookReceiver(SECRET) as receiver:
        env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
        with WorkerProcess(env, tmp_path) as worker:
            receiver.script(400)  # a permanent rejection: the event is dead-lettered at once
            dead_job = enqueue_registration(job_fields(model_dir))
            dead = wait_until(lambda: flower_state(flower, webhook_task_id(dead_job), "FAILURE"), timeout_s=90,
                              what=f"the dead-lettered webhook task to fail\n{worker.log_tail()}")  # fmt: skip
            # 503 asking for an hour: longer than WEBHOOK_BACKOFF_MAX_S, so it waits in the durable schedule
            receiver.script(ScriptedResponse(503, headers={"Retry-After": "3600"}))
            deferred_job = enqueue_registration(job_fields(model_dir))
            deferred = wait_until(lambda: flower_state(flower, webhook_task_id(deferred_job), "RETRY"), timeout_s=90,
                                  what=f"the deferred webhook task to show RETRY\n{worker.log_tail()}")  # fmt: skip
            # passes every check at enqueue; only MLflow can tell that the baseline does not exist
            missing = {"baseline_id": "hokusai_classification_baseline/99", "delta_metrics": {"auc": 0.1}}
            failed_job = enqueue_registration(job_fields(model_dir, kind="improved", contributor=WALLET, **missing))
            failed = wait_until(lambda: flower_state(flower, failed_job, "FAILURE"), timeout_s=90,
                                what="the failed registration to show FAILURE")  # fmt: skip
            failures = httpx.get(f"{flower}/api/tasks", params={"state": "FAILURE"}, auth=AUTH, timeout=5).json()
            successes = httpx.get(f"{flower}/api/tasks", params={"state": "SUCCESS"}, auth=AUTH, timeout=5).json()

    event_ids = {request.headers["webhook-id"] for request in receiver.requests}
    assert len(event_ids) == 2
    assert dead["name"] == WEBHOOK_TASK and "WebhookDeadLetteredError" in dead["exception"]
    assert "answered 400" in dead["exception"] and any(event_id in dead["exception"] for event_id in event_ids)
    assert "WebhookDeadLetteredError" in dead["traceback"]
    assert deferred["name"] == WEBHOOK_TASK and "durable schedule" in deferred["exception"]
    assert "503" in deferred["exception"] and any(event_id in deferred["exception"] for event_id in event_ids)
    assert failed["name"] == REGISTER_TASK
    assert "hokusai_classification_baseline/99 does not exist in MLflow" in failed["exception"]
    assert {webhook_task_id(dead_job), failed_job} <= set(failures)
    assert webhook_task_id(deferred_job) not in failures
    assert not {webhook_task_id(dead_job), webhook_task_id(deferred_job), failed_job} & set(successes)
    # the result backend agrees with Flower
    app = client_app(redis_url)
    assert app.AsyncResult(webhook_task_id(dead_job)).state == "FAILURE"
    assert app.AsyncResult(webhook_task_id(deferred_job)).state == "RETRY"


def test_flower_api_refuses_requests_without_credentials(flower: str) -> None:
    for path in ("/api/tasks", "/api/workers", f"/api/task/info/{'0' * 8}"):
        assert httpx.get(f"{flower}{path}", timeout=5).status_code == 401, path
        assert httpx.get(f"{flower}{path}", auth=("operator", "wrong"), timeout=5).status_code == 401, path
    assert httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).status_code == 200
    metrics = httpx.get(f"{flower}/metrics", timeout=5)  # Celery's task metrics, for Prometheus
    assert metrics.status_code == 200 and "flower_events_total" in metrics.text


def test_flower_lists_the_running_worker_and_its_refreshes_quarantine_nothing(
    flower: str, worker_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    store = quarantine.store(redis.Redis.from_url(redis_url))

    def workers() -> dict[str, Any]:  # what the Workers page asks for: the workers' inspect replies
        response = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    with WorkerProcess(worker_env, tmp_path) as worker:
        listed = wait_until(lambda: {n: w for n, w in workers().items() if n.startswith(f"{worker.name}@")},
                            timeout_s=60, what=f"flower to list {worker.name}")  # fmt: skip
        for _ in range(3):  # each refresh is a round of inspect calls, replies on a pidbox reply queue
            assert any(name.startswith(f"{worker.name}@") for name in workers())
        log = worker.log_text()

    (info,) = listed.values()
    assert {queue["name"] for queue in info["active_queues"]} == {REGISTRATION_QUEUE, WEBHOOK_QUEUE}
    assert REGISTER_TASK in info["registered"]
    assert store.list() == [], [record.reason for record in store.list()]
    assert "quarantined" not in log
