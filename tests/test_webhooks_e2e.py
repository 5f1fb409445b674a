"""Webhook emission end to end: real worker processes, real Redis, a real receiver on loopback."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from mlflow.tracking import MlflowClient

from devtools.receiver import ScriptedResponse, WebhookReceiver
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.support import free_port
from tests.worker_process import ROOT, StackError, WorkerProcess, wait_until
from worker.webhooks.store import EventStore

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"hokusai-test-secret-0123456789ab").decode()


@pytest.fixture
def receiver() -> Any:
    with WebhookReceiver(SECRET) as running:
        yield running


@pytest.fixture
def webhook_env(worker_env: dict[str, str], receiver: WebhookReceiver) -> dict[str, str]:
    return {
        **worker_env,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_HTTP": "true",
    }


def run_job(
    env: dict[str, str], tmp_path: Path, staging: Path, model: Any, *, state: str = "SUCCESS", **overrides: Any
) -> tuple[str, Any]:
    """Enqueue one job under a worker with ``env``; return (job id, the webhook task's result).

    The webhook task must end in ``state``; a FAILURE's result is the exception it raised.
    """
    app = client_app(env["REDIS_URL"])
    with WorkerProcess(env, tmp_path) as worker:
        job_id = enqueue_registration(job_fields(save_model_dir(model, staging), **overrides))
        webhook = wait_result(app, webhook_task_id(job_id), timeout_s=90)
        assert webhook.state == state, worker.log_tail()
    return job_id, webhook.result


def request_gaps(received: WebhookReceiver) -> list[float]:
    times = [request.received_at for request in received.requests]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


def test_registration_sends_one_verified_event_with_the_version(
    webhook_env: dict[str, str], receiver: WebhookReceiver, tracking_uri: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    job_id, outcome = run_job(webhook_env, tmp_path, staging, sk_model, token_id="LEADS-v2")
    assert outcome["status"] == "delivered"
    (version,) = MlflowClient(tracking_uri).search_model_versions(f"tags.job_id = '{job_id}'")
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.hokusai_verified and request.standard_verified
    event = json.loads(request.body)
    assert event["event_type"] == "model_registered"
    assert event["model"]["version"] == str(version.version)
    assert event["model"]["name"] == version.name
    assert event["model"]["id"] == "leads-v2"
    assert event["model"]["user_id"] == "u-42"
    assert event["model"]["model_uuid"] == version.tags["model_uuid"]
    assert request.headers["x-hokusai-idempotency-key"] == request.headers["webhook-id"] == outcome["event_id"]


def test_500_twice_then_200_delivers_once_with_one_key_and_backoff(
    webhook_env: dict[str, str], receiver: WebhookReceiver, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    receiver.script(500, 500, 200)
    _, outcome = run_job(webhook_env, tmp_path, staging, sk_model)
    assert outcome["status"] == "delivered" and outcome["attempt"] == 3
    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert len({r.headers["x-hokusai-idempotency-key"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1, "every attempt sends the same bytes"
    assert len(receiver.events) == 1, "the receiver's dedup saw one event"
    # WEBHOOK_BACKOFF_BASE_S=0.2, equal jitter: after attempt 1 wait 0.1-0.2 s, after attempt 2 0.2-0.4 s
    first_gap, second_gap = request_gaps(receiver)
    assert 0.1 <= first_gap < 5, first_gap
    assert 0.2 <= second_gap < 5, second_gap


def test_400_is_not_retried_and_is_dead_lettered(
    webhook_env: dict[str, str], receiver: WebhookReceiver, redis_url: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    receiver.script(400)
    _, failure = run_job(webhook_env, tmp_path, staging, sk_model, state="FAILURE")
    assert type(failure).__name__ == "WebhookDeadLetteredError"
    assert len(receiver.requests) == 1
    (dead,) = EventStore(redis.Redis.from_url(redis_url)).list_dead_letters()
    assert dead.event.event_id in str(failure) and "answered 400" in str(failure)
    assert dead.attempts == 1 and dead.last_status_code == 400
    assert dead.event.body == receiver.requests[0].body


def test_timeout_is_retried(
    webhook_env: dict[str, str], receiver: WebhookReceiver, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    receiver.script(ScriptedResponse(200, delay_s=3), 200)
    env = {**webhook_env, "WEBHOOK_READ_TIMEOUT_S": "0.5"}
    _, outcome = run_job(env, tmp_path, staging, sk_model)
    assert outcome["status"] == "delivered" and outcome["attempt"] == 2
    assert len({r.headers["x-hokusai-idempotency-key"] for r in receiver.requests}) == 1


def test_receiver_down_for_a_while_then_delivered(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **worker_env,
        "WEBHOOK_URL": f"http://127.0.0.1:{port}/hooks",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_MAX_ATTEMPTS": "100",
    }
    app = client_app(redis_url)
    store = EventStore(redis.Redis.from_url(redis_url))
    with WorkerProcess(env, tmp_path) as worker:
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        registered = wait_result(app, job_id).result
        from worker.webhooks.event import event_id_for

        event_id = event_id_for(registered["model_name"], registered["version"], registered["run_id"])
        wait_until(lambda: (r := store.get(event_id)) and r.attempts >= 3, timeout_s=60, what="3 failed attempts")
        with WebhookReceiver(SECRET, port=port) as back:
            outcome = wait_result(app, webhook_task_id(job_id), timeout_s=60)
            assert outcome.result["status"] == "delivered", worker.log_tail()
            assert len(back.events) == 1
            assert back.requests[0].headers["webhook-id"] == event_id


def test_exhausted_event_is_dead_lettered_then_replayed_with_the_same_key(
    webhook_env: dict[str, str], receiver: WebhookReceiver, redis_url: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    receiver.script(500, 500)
    env = {**webhook_env, "WEBHOOK_MAX_ATTEMPTS": "2"}
    _, failure = run_job(env, tmp_path, staging, sk_model, state="FAILURE")
    assert "dead-lettered after 2 attempt(s)" in str(failure)
    store = EventStore(redis.Redis.from_url(redis_url))
    (dead,) = store.list_dead_letters()
    assert dead.attempts == 2 and dead.last_status_code == 500

    cli = [sys.executable, "-m", "hokusai_app.cli"]
    listed = subprocess.run([*cli, "webhooks", "failed"], env={**os.environ, **env}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listed.returncode == 0 and dead.event.event_id in listed.stdout, listed.stderr
    replayed = subprocess.run([*cli, "webhooks", "replay", dead.event.event_id], env={**os.environ, **env},
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert len(receiver.requests) == 3
    assert receiver.requests[-1].status == 200
    assert receiver.requests[-1].body == receiver.requests[0].body
    assert {r.headers["x-hokusai-idempotency-key"] for r in receiver.requests} == {dead.event.event_id}
    assert store.list_dead_letters() == [], "a delivered replay leaves the dead letters"


def test_worker_killed_while_an_event_waits_for_its_retry_still_delivers(
    webhook_env: dict[str, str], receiver: WebhookReceiver, redis_url: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    receiver.script(500)
    env = {
        **webhook_env,
        "WEBHOOK_BACKOFF_BASE_S": "4",
        "WEBHOOK_BACKOFF_MAX_S": "4",
        "TASK_TIME_LIMIT_S": "5",
        "VISIBILITY_TIMEOUT_S": "10",
    }
    app = client_app(redis_url)
    worker = WorkerProcess(env, tmp_path).start()
    try:
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        wait_until(lambda: len(receiver.requests) == 1, timeout_s=60, what="the first, failing attempt")
        wait_until(lambda: "retrying in" in worker.log_text(), timeout_s=10, what="the retry to be scheduled")
        worker.kill()  # the retry waits in the dead worker's memory, its message unacked in Redis
    finally:
        worker.kill()
    assert len(receiver.requests) == 1
    with WorkerProcess(env, tmp_path) as restarted:
        outcome = wait_result(app, webhook_task_id(job_id), timeout_s=90)
        assert outcome.result["status"] == "delivered", restarted.log_tail()
    assert [r.status for r in receiver.requests] == [500, 200]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def test_long_retry_after_waits_in_the_durable_schedule(
    webhook_env: dict[str, str], receiver: WebhookReceiver, redis_url: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Retry-After (3 s) is longer than WEBHOOK_BACKOFF_MAX_S (1 s): no in-memory countdown may hold it.
    receiver.script(ScriptedResponse(503, headers={"Retry-After": "3"}), 200)
    env = {**webhook_env, "WEBHOOK_SCHEDULE_POLL_S": "0.5"}
    with WorkerProcess(env, tmp_path):
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        # The webhook task waits as RETRY; the deferred delivery ends it under the same task id.
        first = wait_result(client_app(redis_url), webhook_task_id(job_id), timeout_s=90)
        assert first.result["status"] == "delivered" and first.result["attempt"] == 2
        store = EventStore(redis.Redis.from_url(redis_url))
        assert store.get(first.result["event_id"]).state == "delivered"
    assert [r.status for r in receiver.requests] == [503, 200]
    (gap,) = request_gaps(receiver)
    assert gap >= 3, "Retry-After was honoured"


def test_benchmark_gate_below_baseline_sends_no_event(
    webhook_env: dict[str, str], receiver: WebhookReceiver, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    gate = {"metric_name": "auc", "baseline_value": 0.80, "current_value": 0.71}
    _, outcome = run_job(webhook_env, tmp_path, staging, sk_model, benchmark=gate)
    assert outcome["status"] == "skipped"
    assert "auc" in outcome["reason"] and "baseline" in outcome["reason"]
    assert receiver.requests == []


def test_secret_never_in_logs_task_arguments_or_results(
    webhook_env: dict[str, str], receiver: WebhookReceiver, redis_url: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    env = {**webhook_env, "LOG_LEVEL": "DEBUG"}
    receiver.script(500, 200)
    app = client_app(redis_url)
    with WorkerProcess(env, tmp_path) as worker:
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        assert wait_result(app, webhook_task_id(job_id), timeout_s=90).result["status"] == "delivered"
        log = worker.log_text()
    key_material = SECRET.removeprefix("whsec_")
    assert "retrying in" in log and job_id in log, "the log is the real one"
    assert key_material not in log
    client = redis.Redis.from_url(redis_url)
    for key in client.keys("*"):
        kind = client.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"hash":
            values = list(client.hgetall(key).values())
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        assert all(key_material.encode() not in value for value in values), key
    meta = json.loads(client.get(f"celery-task-meta-{job_id}"))
    assert key_material not in json.dumps(meta)
    assert "args" not in meta  # result_extended is off: Flower reads a task's arguments from its events


def test_worker_refuses_to_start_without_a_secret(worker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**worker_env, "WEBHOOK_URL": "https://marketplace.example/hooks"}
    with pytest.raises(StackError, match="worker exited") as refused:
        WorkerProcess(env, tmp_path).start(ready_timeout_s=60)
    assert "WEBHOOK_SECRET is not set" in str(refused.value)
    (tmp_path / "unsigned").mkdir()
    with WorkerProcess({**env, "WEBHOOK_ALLOW_UNSIGNED": "true"}, tmp_path / "unsigned") as allowed:
        assert allowed.process is not None and allowed.process.poll() is None


def test_a_worker_restarted_while_a_retry_waits_in_the_durable_schedule_delivers_it_when_due(
    webhook_env: dict[str, str], receiver: WebhookReceiver, redis_url: str, staging: Path, sk_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The outage of a day on a short WEBHOOK_RETRY_SCHEDULE: 0.2 s (a countdown), then 3 s (over the 1 s
    in-memory cap: the Redis schedule). The worker is SIGKILLed while the event waits there; a new one
    delivers it once it is due, with no operator."""
    receiver.script(500, 500)
    env = {**webhook_env, "WEBHOOK_BACKOFF_BASE_S": "", "WEBHOOK_RETRY_SCHEDULE": "0.2,3,3",
           "WEBHOOK_SCHEDULE_POLL_S": "0.5"}  # fmt: skip
    app = client_app(redis_url)
    store = EventStore(redis.Redis.from_url(redis_url))
    worker = WorkerProcess(env, tmp_path).start()
    try:
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        wait_until(lambda: len(receiver.requests) == 2, timeout_s=60, what="two failing attempts")
        wait_until(lambda: store.counts()[1] == 1, timeout_s=10, what="the retry in the durable schedule")
        worker.kill()
    finally:
        worker.kill()
    assert len(receiver.requests) == 2
    with WorkerProcess(env, tmp_path) as restarted:
        outcome = wait_result(app, webhook_task_id(job_id), timeout_s=90)
        assert outcome.result["status"] == "delivered" and outcome.result["attempt"] == 3, restarted.log_tail()
    assert [r.status for r in receiver.requests] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert request_gaps(receiver)[1] >= 3, "the scheduled wait was kept across the restart"
