"""The true backlog (worker/backlog.py): waiting, held and scheduled, in a real worker's /metrics and the CLI.

Real Celery workers on real Redis: jobs no consumer takes wait; a registration whose MLflow is down
is retried with a countdown and held unacked by the worker; a webhook whose receiver asks for a long
Retry-After waits in the durable schedule. Celery's remote control (``celery inspect ping``) and
messages of other queues never count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from devtools.devstack import free_port
from devtools.receiver import ScriptedResponse, WebhookReceiver
from hokusai_app.cli import main
from hokusai_registry.contract import ENQUEUED_AT_HEADER, REGISTRATION_QUEUE, WEBHOOK_QUEUE
from hokusai_registry.keys import WebhookKeys
from producers import enqueue_registration
from tests.queue_helpers import job_fields, save_model_dir
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import ROOT, WorkerProcess, wait_until
from worker.backlog import STATES, UNACKED_INDEX_KEY, UNACKED_KEY, read_backlog
from worker.queues import queue_keys

Counts = dict[str, float]


def scraped(port: int) -> Counts:
    """``hokusai_backlog_jobs`` by state, and the oldest's age (as ``oldest``), from a worker's /metrics."""
    found: Counts = {}
    for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "hokusai_backlog_jobs":
                found[sample.labels["state"]] = sample.value
            elif sample.name == "hokusai_backlog_oldest_age_seconds":
                found["oldest"] = sample.value
    return found


def cli_backlog() -> dict[str, Any]:
    result = CliRunner().invoke(main, ["backlog"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def states(counts: Counts) -> dict[str, float]:
    return {state: counts.get(state, -1) for state in STATES}


def wait_for_backlog(port: int, expected: dict[str, int], worker: WorkerProcess) -> Counts:
    try:
        return wait_until(
            lambda: (s := scraped(port)) and states(s) == expected and s,
            timeout_s=90,
            what=f"the backlog {expected}",
        )
    except Exception:
        print(worker.log_tail())
        raise


def inspect_ping(worker: WorkerProcess) -> None:
    """What the compose healthcheck runs: Celery's remote control, through the pidbox and a reply queue."""
    ping = [sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout", "10"]
    done = subprocess.run(ping, cwd=ROOT, env=worker.env, capture_output=True, text=True, timeout=120)
    assert "pong" in done.stdout, done.stdout + done.stderr


def metrics_env(env: dict[str, str]) -> tuple[dict[str, str], int]:
    port = free_port()
    return {**env, "METRICS_PORT": str(port)}, port


# ---------------------------------------------------------------------- the computation on real Redis
def test_only_the_products_queues_count_every_priority_list_and_the_webhook_schedule(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    stamped = json.dumps({"headers": {ENQUEUED_AT_HEADER: now - 40}, "body": "x"})
    registration_lists = queue_keys(REGISTRATION_QUEUE)
    client.lpush(registration_lists[0], stamped, stamped)
    client.lpush(registration_lists[-1], json.dumps({"headers": {ENQUEUED_AT_HEADER: now - 90}}))  # a priority list
    client.lpush(queue_keys(WEBHOOK_QUEUE)[0], json.dumps({"headers": {}}))  # unstamped: age unknown
    # Celery's own queues and another application's messages on the same database
    client.lpush("celery", stamped)
    client.lpush(f"{'0' * 8}.reply.celery.pidbox", stamped)
    client.lpush("worker-1@host.celery.pidbox", stamped)
    unacked = {
        "tag-r": [{"body": 'a ] " quoted'}, REGISTRATION_QUEUE, REGISTRATION_QUEUE],
        "tag-w": [{"body": "b"}, WEBHOOK_QUEUE, WEBHOOK_QUEUE],
        "tag-other": [{"body": "c"}, "celery", "celery"],
    }
    for tag, entry in unacked.items():
        client.hset(UNACKED_KEY, tag, json.dumps(entry))
    client.zadd(UNACKED_INDEX_KEY, {"tag-r": now - 200, "tag-w": now - 5, "tag-other": now - 900})
    keys = WebhookKeys()
    client.zadd(keys.deferred, {"e1": now + 300, "e2": now - 30})  # e2 is due since 30 s
    client.zadd(keys.disabled_endpoints, {"crm": now})
    client.zadd(keys.held("crm"), {"e3@crm": now - 60})

    backlog = read_backlog(client, now=now)
    report = backlog.as_dict()

    assert (report["waiting"], report["held"], report["scheduled"], report["total"]) == (4, 2, 3, 9)
    registrations, webhooks = report["queues"][REGISTRATION_QUEUE], report["queues"][WEBHOOK_QUEUE]
    assert (registrations["waiting"], registrations["held"], registrations["scheduled"]) == (3, 1, 0)
    assert (webhooks["waiting"], webhooks["held"], webhooks["scheduled"]) == (1, 1, 3)
    assert registrations["oldest_age_s"] == pytest.approx(200, abs=0.01)  # held since its delivery
    assert webhooks["oldest_age_s"] == pytest.approx(60, abs=0.01)  # held for a disabled endpoint since created
    assert report["oldest_age_s"] == pytest.approx(200, abs=0.01)


def test_an_empty_database_has_no_backlog_and_redis_down_exits_4(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = cli_backlog()
    assert (report["waiting"], report["held"], report["scheduled"], report["total"], report["oldest_age_s"]) == (
        0, 0, 0, 0, 0
    )  # fmt: skip
    assert set(report["queues"]) == {REGISTRATION_QUEUE, WEBHOOK_QUEUE}
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    from hokusai_registry.settings import get_settings

    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["backlog"])
    assert result.exit_code == 4, result.output
    assert "unreachable" in result.stderr


# ---------------------------------------------------------------------- real workers
@pytest.mark.slow
def test_jobs_no_worker_consumes_are_waiting_and_pidbox_traffic_does_not_count(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    env, port = metrics_env(worker_env)
    model_dir = save_model_dir(sk_model, staging)
    # the worker consumes only the webhook queue: nobody takes the registrations
    with WorkerProcess(env, tmp_path, queues=(WEBHOOK_QUEUE,)) as worker:
        for _ in range(3):
            enqueue_registration(job_fields(model_dir))
        scrape = wait_for_backlog(port, {"waiting": 3, "held": 0, "scheduled": 0}, worker)
        report = cli_backlog()
        inspect_ping(worker)
        assert redis.Redis.from_url(redis_url).keys("*pidbox*"), "the ping went through Redis"
        after_ping = scraped(port)
        report_after_ping = cli_backlog()

    assert scrape["oldest"] > 0
    assert (report["waiting"], report["held"], report["scheduled"], report["total"]) == (3, 0, 0, 3)
    assert report["queues"][REGISTRATION_QUEUE]["waiting"] == 3
    assert report["queues"][WEBHOOK_QUEUE]["total"] == 0
    assert states(after_ping) == {"waiting": 3, "held": 0, "scheduled": 0}
    assert report_after_ping["total"] == 3


@pytest.mark.slow
def test_registrations_retried_with_a_countdown_while_mlflow_is_down_are_held(
    worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    mlflow_down = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt is retried
    slow_retries = {
        "MLFLOW_TRACKING_URI": mlflow_down,
        "REGISTRY_BACKOFF_BASE_S": "60",
        "REGISTRY_BACKOFF_MAX_S": "60",
        "VISIBILITY_TIMEOUT_S": "120",  # > TASK_TIME_LIMIT_S + the largest backoff cap
    }
    env, port = metrics_env({**worker_env, **slow_retries})
    model_dir = save_model_dir(sk_model, staging)
    with WorkerProcess(env, tmp_path) as worker:
        for _ in range(2):
            enqueue_registration(job_fields(model_dir))
        scrape = wait_for_backlog(port, {"waiting": 0, "held": 2, "scheduled": 0}, worker)
        report = cli_backlog()
        inspect_ping(worker)
        after_ping = scraped(port)
        log = worker.log_text()

    assert "retrying in" in log, "held by a countdown retry, not merely running"
    assert scrape["oldest"] >= 0
    assert (report["waiting"], report["held"], report["scheduled"], report["total"]) == (0, 2, 0, 2)
    assert report["queues"][REGISTRATION_QUEUE]["held"] == 2
    assert states(after_ping) == {"waiting": 0, "held": 2, "scheduled": 0}


@pytest.mark.slow
def test_a_webhook_deferred_by_a_long_retry_after_is_scheduled(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    with WebhookReceiver(SECRET) as receiver:
        receiver.script(ScriptedResponse(503, headers={"Retry-After": "600"}))
        webhook = {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
        env, port = metrics_env({**worker_env, **webhook})
        with WorkerProcess(env, tmp_path) as worker:
            enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
            wait_until(lambda: len(receiver.requests) >= 1, timeout_s=90, what="the first webhook attempt")
            scrape = wait_for_backlog(port, {"waiting": 0, "held": 0, "scheduled": 1}, worker)
            report = cli_backlog()

    deferred = redis.Redis.from_url(redis_url).zcard(WebhookKeys().deferred)
    assert deferred == 1, "the delivery waits in the durable schedule"
    assert scrape["oldest"] == 0, "not due yet"
    assert (report["waiting"], report["held"], report["scheduled"], report["total"]) == (0, 0, 1, 1)
    assert report["queues"][WEBHOOK_QUEUE]["scheduled"] == 1
    assert report["queues"][REGISTRATION_QUEUE]["total"] == 0
