"""The worker's /metrics: scraped from a real prefork worker after real jobs; gauges read from real Redis."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from devtools import devstack
from devtools.builders import WALLET
from devtools.devstack import free_port
from devtools.receiver import WebhookReceiver
from hokusai_registry import failed_jobs
from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE
from hokusai_registry.keys import QUARANTINE_KEY
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.test_flower import running_flower
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import ROOT, WorkerProcess, wait_until
from worker.metrics import EXPORTED_METRICS, PRIVATE_FOLDER_PREFIX, RedisCollector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_metrics_endpoint_of_a_prefork_worker_counts_real_jobs(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    port = free_port()
    model_dir = save_model_dir(sk_model, staging)
    app = client_app(redis_url)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # a previous run's counter file: the worker must start from zero, not add it in
    stale = "from worker.metrics import REGISTRATIONS; REGISTRATIONS.labels('success').inc(5)"
    subprocess.run([sys.executable, "-c", stale], cwd=ROOT, check=True, timeout=120,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})  # fmt: skip
    assert list(metrics_dir.glob("*.db"))
    with WebhookReceiver(SECRET) as receiver:
        receiver.script(200, 400)  # the first event is delivered, the second dead-lettered at once
        env = {
            **worker_env,
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_ALLOW_HTTP": "true",
            "METRICS_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        with WorkerProcess(env, tmp_path, concurrency=2) as worker:
            delivered = enqueue_registration(job_fields(model_dir))
            assert wait_result(app, webhook_task_id(delivered), 90).state == "SUCCESS", worker.log_tail()
            dead = enqueue_registration(job_fields(model_dir))
            assert wait_result(app, webhook_task_id(dead), 90).state == "FAILURE", worker.log_tail()
            missing_baseline = {"baseline_id": "hokusai_classification_baseline/99", "delta_metrics": {"auc": 0.1}}
            failed = enqueue_registration(
                job_fields(model_dir, kind="improved", contributor=WALLET, **missing_baseline)
            )  # only MLflow can tell the baseline is missing: the registration fails in the worker
            assert wait_result(app, failed, 90).state == "FAILURE", worker.log_tail()
            url = f"http://127.0.0.1:{port}/metrics"
            # postrun signals run just after the result is stored: poll until the last one counted
            samples = wait_until(
                lambda: (
                    (s := parse(httpx.get(url, timeout=5).text))
                    and value(s, "hokusai_registrations_total", outcome="failure") == 1
                    and value(s, "hokusai_webhook_events_total", outcome="dead_lettered", endpoint="default") == 1
                    and s
                ),
                timeout_s=20,
                what="the metrics to count every job",
            )
            # what the compose healthcheck does (`celery -A worker inspect ping`) must not wipe the counters
            ping = [sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout", "10"]
            subprocess.run(ping, cwd=ROOT, env=worker.env, capture_output=True, timeout=120)
            after_ping = parse(httpx.get(url, timeout=5).text)

    assert value(samples, "hokusai_registrations_total", outcome="success") == 2
    assert value(after_ping, "hokusai_registrations_total", outcome="success") == 2
    assert value(samples, "hokusai_registrations_total", outcome="failure") == 1
    assert value(samples, "hokusai_registration_duration_seconds_count", outcome="success") == 2
    assert value(samples, "hokusai_registration_duration_seconds_sum", outcome="success") > 0
    assert value(samples, "hokusai_registration_duration_seconds_bucket", outcome="success", le="+Inf") == 2
    assert value(samples, "hokusai_webhook_attempts_total", status_class="2xx", endpoint="default") == 1
    assert value(samples, "hokusai_webhook_attempts_total", status_class="4xx", endpoint="default") == 1
    assert value(samples, "hokusai_webhook_events_total", outcome="delivered", endpoint="default") == 1
    assert value(samples, "hokusai_webhook_events_total", outcome="dead_lettered", endpoint="default") == 1
    assert value(samples, "hokusai_webhook_dead_letters") == 1
    assert value(samples, "hokusai_webhook_deferred_events") == 0
    assert value(samples, "hokusai_failed_jobs") == 1
    assert value(samples, "hokusai_quarantined_messages") == 0
    assert value(samples, "hokusai_metrics_redis_up") == 1
    for queue in (REGISTRATION_QUEUE, WEBHOOK_QUEUE):
        assert value(samples, "hokusai_queue_depth", queue=queue) == 0
    names = {name for name, _ in samples}
    for metric in EXPORTED_METRICS:
        assert any(name == metric or name.startswith(f"{metric}_") for name in names), metric


def scrape(url: str) -> Samples:
    return parse(httpx.get(url, timeout=5).text)


def counters_folder(worker: devstack.WorkerProcess) -> Path:
    """The private folder a worker without PROMETHEUS_MULTIPROC_DIR keeps its counters in (it logs it)."""
    found = re.search(r"/metrics \(counters in (.+)\)$", worker.log_text(), re.MULTILINE)
    assert found, worker.log_tail()
    return Path(found.group(1))


@pytest.mark.slow
def test_metrics_port_alone_sums_every_pool_process_in_a_private_folder_removed_at_stop(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    """As the README runs a worker: METRICS_PORT, no PROMETHEUS_MULTIPROC_DIR (`celery` has imported
    prometheus_client, through Flower's plugin, before the app is loaded)."""
    jobs = 4
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    model_dir = save_model_dir(sk_model, staging)
    app = client_app(redis_url)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    clients_tmp = tmp_path / "clients-tmp"  # the temp dir of the other commands that load the app
    clients_tmp.mkdir()

    def run_jobs(count: int, worker: devstack.WorkerProcess) -> None:
        job_ids = [enqueue_registration(job_fields(model_dir)) for _ in range(count)]
        for job_id in job_ids:
            assert wait_result(app, webhook_task_id(job_id), 120).state == "SUCCESS", worker.log_tail()

    def counted(count: int) -> Samples:  # postrun signals run just after the result is stored: poll
        return wait_until(lambda: (s := scrape(url)) and value(s, "hokusai_webhook_events_total", outcome="delivered",
                                                                 endpoint="default") == count and s,
                          timeout_s=20, what=f"the metrics to count {count} jobs")  # fmt: skip

    with WebhookReceiver(SECRET) as receiver:
        env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true",
               "METRICS_PORT": str(port)}  # fmt: skip
        with WorkerProcess(env, tmp_path, concurrency=2) as worker:
            run_jobs(jobs, worker)
            samples = counted(jobs)
            folder = counters_folder(worker)
            assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(PRIVATE_FOLDER_PREFIX)
            counting_pids = {path.stem.rsplit("_", 1)[1] for path in folder.glob("counter_*.db")}
            # the compose healthcheck runs `celery inspect ping` beside the worker, with METRICS_PORT set
            others = {**worker.env, "TMPDIR": str(clients_tmp)}
            ping = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping", "--timeout",
                                   "20", "-d", f"{worker.name}@{socket.gethostname()}"], cwd=ROOT, env=others,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert ping.returncode == 0, ping.stdout + ping.stderr
            with running_flower(redis_url, tmp_path, {"METRICS_PORT": str(port), "TMPDIR": str(clients_tmp)}):
                pass
            after_others = scrape(url)
        assert not folder.exists(), "the private folder outlived its warm-stopped worker"
        with WorkerProcess(env, tmp_path, concurrency=2) as restarted:
            run_jobs(1, restarted)
            after_restart = counted(1)
            second_folder = counters_folder(restarted)
        assert not second_folder.exists()

    assert len(counting_pids) == 2, f"both pool processes counted: {sorted(counting_pids)}"
    assert value(samples, "hokusai_registrations_total", outcome="success") == jobs
    assert value(samples, "hokusai_registration_duration_seconds_count", outcome="success") == jobs
    assert value(samples, "hokusai_webhook_attempts_total", status_class="2xx", endpoint="default") == jobs
    assert value(samples, "hokusai_webhook_events_total", outcome="delivered", endpoint="default") == jobs
    assert list(clients_tmp.iterdir()) == [], "only the worker makes a metrics folder"
    assert value(after_others, "hokusai_registrations_total", outcome="success") == jobs
    assert second_folder != folder
    assert value(after_restart, "hokusai_registrations_total", outcome="success") == 1, "a restart counts from zero"
    assert value(after_restart, "hokusai_webhook_attempts_total", status_class="2xx", endpoint="default") == 1


@pytest.mark.slow
def test_a_sigkilled_workers_private_metrics_folder_is_removed_by_the_next_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**worker_env, "METRICS_PORT": str(free_port())}
    killed = WorkerProcess(env, tmp_path, concurrency=1).start()
    try:
        left = counters_folder(killed)
    finally:
        killed.kill()  # SIGKILL: no atexit handler runs
    assert left.is_dir(), "SIGKILL leaves the folder behind"
    with WorkerProcess({**env, "METRICS_PORT": str(free_port())}, tmp_path, concurrency=1) as next_worker:
        counters_folder(next_worker)  # it has chosen its own folder, after the sweep
        assert not left.exists(), "the next worker on the host removes a dead worker's metrics folder"


def test_redis_gauges_count_waiting_jobs_their_age_and_the_stores(redis_url: str, staging: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    collector = RedisCollector(redis_url)

    def gauges() -> Samples:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in collector.collect() for s in f.samples}

    empty = gauges()
    assert value(empty, "hokusai_queue_depth", queue=REGISTRATION_QUEUE) == 0
    assert value(empty, "hokusai_queue_oldest_job_age_seconds", queue=REGISTRATION_QUEUE) == 0
    assert value(empty, "hokusai_quarantined_messages") == 0, "a missing quarantine key counts 0"

    published_at = time.time()
    model_dir = staging / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")  # enough for validate_job; no worker reads it
    for _ in range(3):  # no worker: the jobs wait in the queue
        enqueue_registration(job_fields(model_dir))
    wait_until(lambda: time.time() - published_at >= 1.0, timeout_s=5, what="a second to pass")
    client.hset(QUARANTINE_KEY, mapping={"q1": "{}", "q2": "{}"})
    failed_jobs.record_failure(client, str(uuid.uuid4()), reason="bad job", error_type="InvalidJobError")
    waiting = gauges()
    assert value(waiting, "hokusai_queue_depth", queue=REGISTRATION_QUEUE) == 3
    assert value(waiting, "hokusai_queue_depth", queue=WEBHOOK_QUEUE) == 0
    age = value(waiting, "hokusai_queue_oldest_job_age_seconds", queue=REGISTRATION_QUEUE)
    assert 1.0 <= age <= time.time() - published_at + 1
    assert value(waiting, "hokusai_quarantined_messages") == 2
    assert value(waiting, "hokusai_failed_jobs") == 1


def test_redis_gauges_report_redis_down_instead_of_failing_the_scrape() -> None:
    collector = RedisCollector(f"redis://127.0.0.1:{free_port()}/0")
    samples = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert samples == {"hokusai_metrics_redis_up": 0}
