"""Flower, as operators run it: a real `celery -A worker flower` with basic auth, watching a real job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.devstack import free_port, log_tail, stop_process_group
from devtools.receiver import WebhookReceiver
from hokusai_registry.contract import REGISTER_TASK, WEBHOOK_TASK
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from tests.queue_helpers import job_fields, save_model_dir
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

AUTH = ("operator", "flower-test-password")


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path / "flower.log"
    command = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1",
               f"--basic-auth={AUTH[0]}:{AUTH[1]}"]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "REDIS_URL": redis_url}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
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


def test_flower_api_refuses_requests_without_credentials(flower: str) -> None:
    for path in ("/api/tasks", "/api/workers", f"/api/task/info/{'0' * 8}"):
        assert httpx.get(f"{flower}{path}", timeout=5).status_code == 401, path
        assert httpx.get(f"{flower}{path}", auth=("operator", "wrong"), timeout=5).status_code == 401, path
    assert httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).status_code == 200
