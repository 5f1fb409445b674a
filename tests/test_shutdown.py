"""SIGTERM during a registration, as Kubernetes and ECS send it: finished within the grace, or handed back.

Real ``celery -A worker worker`` processes, a real sqlite MLflow store, real Redis and a real
receiver. The grace period comes from deploy/kubernetes/worker-deployment.yaml
(``terminationGracePeriodSeconds``, sized there as TASK_TIME_LIMIT_S + 60 s from configmap.yaml's
TASK_TIME_LIMIT_S); a test scales it by the ratio grace / time limit of the manifests
(660 / 600 = 1.1) to its own short TASK_TIME_LIMIT_S, so the test grace keeps the rule's shape.

* Within the grace: SIGTERM while the job runs → Celery's warm shutdown (no new message taken,
  the running task finishes) → the process exits before the grace; the job registered once; the
  chained webhook, left in the queue, is delivered once by a second worker.
* Beyond the grace: a job slowed by a large artifact, on a platform whose grace is shorter than
  the job (the kubelet SIGKILLs at its end): the message stays unacknowledged (acks late), a second
  worker gets it after VISIBILITY_TIMEOUT_S (10 s here) and registers it: one version, one webhook.
"""

from __future__ import annotations

import base64
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from devtools.receiver import WebhookReceiver
from producers import enqueue_registration
from producers.enqueue import webhook_task_id
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.worker_process import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"hokusai-shutdown-test-secret-012").decode()
#: The short timings of these tests (visibility > time limit + the largest backoff cap, as Settings wants).
TIMINGS = {"TASK_TIME_LIMIT_S": "8", "VISIBILITY_TIMEOUT_S": "10"}


def manifest_grace() -> tuple[int, int]:
    """(terminationGracePeriodSeconds, TASK_TIME_LIMIT_S) of the Kubernetes manifests."""
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/worker-deployment.yaml").read_text())
    configmap = yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())
    return int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]), int(
        configmap["data"]["TASK_TIME_LIMIT_S"]
    )


def scaled_grace_s(task_time_limit_s: float) -> float:
    """The manifests' grace for a worker whose TASK_TIME_LIMIT_S is ``task_time_limit_s`` (same ratio)."""
    grace, limit = manifest_grace()
    return task_time_limit_s * grace / limit


def test_manifest_grace_covers_the_time_limit() -> None:
    grace, limit = manifest_grace()
    assert grace >= limit + 60, (grace, limit)


def sigterm(worker: WorkerProcess) -> None:
    """SIGTERM to the worker's main process only, as a container runtime sends it to PID 1."""
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)


def accepted_for(receiver: WebhookReceiver, job_version: str) -> list[Any]:
    return [
        r for r in receiver.requests
        if 200 <= r.status < 300 and not r.duplicate and f'"version":"{job_version}"' in r.body.decode()
    ]  # fmt: skip


def env_with(worker_env: dict[str, str], receiver: WebhookReceiver, staging: Path) -> dict[str, str]:
    return {
        **worker_env,
        **TIMINGS,
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_HTTP": "true",
        "ALLOWED_ARTIFACT_ROOTS": str(staging),
    }


def test_sigterm_mid_job_finishes_within_the_grace_and_the_webhook_runs_elsewhere(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    app = client_app(redis_url)
    with WebhookReceiver(SECRET) as receiver:
        env = env_with(worker_env, receiver, staging)
        grace = scaled_grace_s(float(TIMINGS["TASK_TIME_LIMIT_S"]))
        model_dir = save_model_dir(sk_model, staging, padding_mb=32)
        first = WorkerProcess(env, tmp_path / "first").start()
        try:
            job_id = enqueue_registration(job_fields(model_dir))
            wait_until(lambda: app.AsyncResult(job_id).state == "STARTED", timeout_s=60, interval_s=0.01)
            sigterm(first)
            signalled = time.monotonic()
            assert first.process is not None
            try:
                first.process.wait(timeout=grace)
            except Exception:
                pytest.fail(f"the worker did not exit within the grace of {grace:g} s:\n{first.log_tail()}")
            exited_after = time.monotonic() - signalled
        finally:
            first.kill()
        assert "Warm shutdown" in first.log_text()
        assert app.AsyncResult(job_id).state == "SUCCESS", first.log_tail()
        assert app.backend.client.hlen("unacked") == 0, "the finished job's message must be acknowledged"
        assert exited_after < grace
        with WorkerProcess(env, tmp_path / "second") as second:
            hook = wait_result(app, webhook_task_id(job_id), timeout_s=60)
            assert hook.state == "SUCCESS", second.log_tail()
        versions = versions_of_job(MlflowClient(tracking_uri), job_id)
        assert len(versions) == 1
        assert len(accepted_for(receiver, str(versions[0].version))) == 1
        assert len(receiver.events) == 1


def test_sigterm_then_sigkill_at_grace_expiry_hands_the_job_to_another_worker(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    app = client_app(redis_url)
    with WebhookReceiver(SECRET) as receiver:
        env = env_with(worker_env, receiver, staging)
        short_grace_s = 0.1  # a platform grace below the rule (e.g. left at a default): the job outlives it
        model_dir = save_model_dir(sk_model, staging, padding_mb=768)  # a slow registration (~1 s of copying)
        first = WorkerProcess(env, tmp_path / "first").start()
        try:
            job_id = enqueue_registration(job_fields(model_dir))
            wait_until(lambda: app.AsyncResult(job_id).state == "STARTED", timeout_s=60, interval_s=0.01)
            sigterm(first)
            time.sleep(short_grace_s)
            assert first.process is not None and first.process.poll() is None, "still finishing its job"
            assert app.AsyncResult(job_id).state == "STARTED", "the kill must land while the job runs"
            first.kill()  # the kubelet at the grace's end: SIGKILL to every process of the container
            assert app.backend.client.hlen("unacked") == 1, "the message must survive unacknowledged"
        finally:
            first.kill()
        handed_back = time.monotonic()
        with WorkerProcess(env, tmp_path / "second") as second:
            result = wait_result(app, job_id, timeout_s=90)
            assert result.state == "SUCCESS", second.log_tail()
            hook = wait_result(app, webhook_task_id(job_id), timeout_s=60)
            assert hook.state == "SUCCESS", second.log_tail()
        assert time.monotonic() - handed_back >= float(TIMINGS["VISIBILITY_TIMEOUT_S"]) - 2
        versions = versions_of_job(MlflowClient(tracking_uri), job_id)
        assert len(versions) == 1
        assert result.result["version"] == str(versions[0].version)
        assert len(accepted_for(receiver, str(versions[0].version))) == 1
        assert len(receiver.events) == 1


def test_the_sweep_lock_a_worker_takes_expires_in_seconds_not_kombus_five_minutes(
    worker_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """A worker killed (or cut off) while it holds the unacked sweep's lock blocks every sweep until
    the lock expires: the lease a real worker asks Redis for is celeryconfig's, not kombu's 300 s."""
    import threading

    import redis

    from celeryconfig import UNACKED_MUTEX_EXPIRE_S

    leases: list[str] = []
    watcher = redis.Redis.from_url(redis_url)

    def watch() -> None:  # MONITOR: every command the server executes
        try:
            with watcher.monitor() as monitor:
                for entry in monitor.listen():
                    if entry["command"].startswith("SET unacked_mutex "):
                        leases.append(entry["command"])
        except (redis.RedisError, ValueError):
            pass  # the connection is closed when the test ends

    threading.Thread(target=watch, daemon=True).start()
    with WorkerProcess(worker_env, tmp_path):  # sweeps every UNACKED_RESTORE_INTERVAL_S (1 s here)
        wait_until(lambda: leases, timeout_s=30, what="a sweep taking its lock")
    watcher.close()
    assert leases[0].split()[-2:] == ["PX", str(UNACKED_MUTEX_EXPIRE_S * 1000)], leases[0]
    assert UNACKED_MUTEX_EXPIRE_S < 60
