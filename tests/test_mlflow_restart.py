"""A tracking-server restart loses no registration: a real ``mlflow server`` on PostgreSQL, SIGKILLed
(all its processes) just after a version is created, mid-upload and between jobs, started again ~8 s
later on the same database. Every job ends with one version and one delivered event; no LoggedModel
is left PENDING."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import mlflow
import psycopg2
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from devtools import devstack
from devtools.receiver import WebhookReceiver
from producers import enqueue_registration
from tests.mlflow_server import fresh_database, running_mlflow_server
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import WorkerProcess, wait_until

pytestmark = pytest.mark.slow

OUTAGE_S = 8.0


class Server:
    """The tracking server, killable and restartable on the same port and database."""

    def __init__(self, stack: ExitStack, backend_uri: str, artifacts_dir: Path) -> None:
        self.stack, self.backend_uri, self.artifacts_dir = stack, backend_uri, artifacts_dir
        self.port = devstack.free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.url = ""

    def start(self) -> None:
        self.url = self.stack.enter_context(
            running_mlflow_server(
                artifacts_dir=self.artifacts_dir, port=self.port, backend_uri=self.backend_uri, started=self.processes
            )
        )

    def kill(self) -> float:
        devstack.stop_process_group(self.processes[-1], kill=True)
        return time.monotonic()

    def restart_after_outage(self, killed_at: float) -> None:
        time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))  # the outage itself, not a wait for a result
        self.start()


def count_rows(dsn_uri: str, sql: str) -> int:
    connection = psycopg2.connect(dsn_uri.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def kill_when(server: Server, condition: Callable[[], bool], what: str) -> float:
    wait_until(condition, timeout_s=120, interval_s=0.005, what=what)
    return server.kill()


def test_tracking_server_killed_at_three_moments_every_job_one_version_one_event(
    redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        backend_uri = stack.enter_context(fresh_database())
        server = Server(stack, backend_uri, tmp_path / "server" / "artifacts")
        server.start()
        receiver = stack.enter_context(WebhookReceiver(SECRET))
        env = {
            "REDIS_URL": redis_url,
            "MLFLOW_TRACKING_URI": server.url,
            "ALLOWED_ARTIFACT_ROOTS": str(staging),
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": SECRET,
            "WEBHOOK_ALLOW_HTTP": "true",
            "REGISTRY_MAX_RETRIES": "40",
        }
        app = client_app(redis_url)
        worker = stack.enter_context(WorkerProcess(env, tmp_path / "worker"))
        jobs = []

        # 1. just after the version is created (MLflow then reads the LoggedModel, and fails)
        jobs.append(enqueue_registration(job_fields(save_model_dir(sk_model, staging))))
        killed = kill_when(server, lambda: count_rows(backend_uri, "SELECT count(*) FROM model_versions") >= 1,
                           "the first version to exist")  # fmt: skip
        first_state = app.AsyncResult(jobs[0]).state
        server.restart_after_outage(killed)
        assert wait_result(app, jobs[0], timeout_s=180).state == "SUCCESS", worker.log_tail()

        # 2. mid-upload of a large model
        artifacts = server.artifacts_dir
        before = set(artifacts.rglob("padding.bin"))
        jobs.append(enqueue_registration(job_fields(save_model_dir(sk_model, staging, padding_mb=96))))
        killed = kill_when(server, lambda: bool(set(artifacts.rglob("padding.bin")) - before), "the upload to start")
        server.restart_after_outage(killed)
        assert wait_result(app, jobs[1], timeout_s=180).state == "SUCCESS", worker.log_tail()

        # 3. between jobs: the next job arrives while the server is down
        wait_until(lambda: len(receiver.events) >= 2, timeout_s=60, what="the first two events")
        killed = server.kill()
        jobs.append(enqueue_registration(job_fields(save_model_dir(sk_model, staging))))
        server.restart_after_outage(killed)
        assert wait_result(app, jobs[2], timeout_s=180).state == "SUCCESS", worker.log_tail()

        events = receiver.wait_for(3, timeout_s=60)
        log = worker.log_text()
        client = MlflowClient(server.url)
        versions = {job_id: versions_of_job(client, job_id) for job_id in jobs}
        mlflow.set_tracking_uri(server.url)
        experiments = [e.experiment_id for e in client.search_experiments()]
        logged = mlflow.search_logged_models(experiment_ids=experiments, output_format="list")

    assert first_state != "SUCCESS", "the first kill must land while the job runs"
    assert "retrying in" in log  # the outage was seen and retried, not failed for good
    assert all(len(found) == 1 for found in versions.values()), versions
    assert len(events) == 3  # one event per job, none twice
    assert sorted(event["model"]["version"] for event in events) == sorted(
        str(found[0].version) for found in versions.values()
    )
    assert [m.model_id for m in logged if m.status == LoggedModelStatus.PENDING] == []
