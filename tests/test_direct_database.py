"""Workers on the tracking server's database (``TRACKING_DATABASE_URI``), as docker-compose.yml runs them.

A real ``mlflow server`` with compose's flags and environment on PostgreSQL, real ``celery -A
worker worker`` processes with the database URI, its password in a file, and the server's artifact
folder (``SERVED_ARTIFACTS_DESTINATION``). The worker's requests to the server are counted by a
proxy: after the first job (the served-artifacts check) a registration makes none, and what it
wrote is what the server serves. PostgreSQL itself is a cluster of the test's own, SIGKILLed while
jobs wait, while one runs, and when a worker starts: the jobs retry and end with one version and one
event each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from json import loads as json_loads
from pathlib import Path
from typing import Any

import mlflow
import psycopg2
import pytest
import redis
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from bench.topologies import compose_topology
from devtools import devstack
from devtools.receiver import WebhookReceiver
from devtools.request_counter import RequestCounter
from hokusai_registry import failed_jobs
from hokusai_registry.errors import ConfigurationError
from hokusai_registry.settings import Settings, describe_invalid
from producers import enqueue_registration
from tests.mlflow_server import fresh_database
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.test_mlflow_restart import count_rows
from tests.test_topology import secret_file
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import WorkerProcess, wait_until
from worker.registration.registry import HokusaiModelRegistry

pytestmark = [pytest.mark.slow, pytest.mark.server]


@contextmanager
def compose_server(backend_uri: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` with docker-compose.yml's serving flags and environment; yield its URL."""
    topology = compose_topology()
    with devstack.mlflow_server(
        backend_uri=backend_uri,
        artifacts_dir=artifacts,
        workers=topology.workers,
        extra_args=topology.flags,
        env=dict(topology.env),
    ) as url:
        yield url


def direct_env(
    tmp_path: Path, redis_url: str, server_url: str, database_uri: str, artifacts: Path, receiver: WebhookReceiver
) -> tuple[dict[str, str], str]:
    """A worker's environment as compose sets it; returns it and the database password it reads from a file."""
    password = f"db-{uuid.uuid4().hex}"  # PostgreSQL here trusts loopback: any password is accepted
    env = {
        "REDIS_URL": redis_url,
        "MLFLOW_TRACKING_URI": server_url,
        "TRACKING_DATABASE_URI": database_uri.replace("postgresql+psycopg2://", "postgresql://"),
        "TRACKING_DATABASE_PASSWORD_FILE": secret_file(tmp_path / "secrets", "postgres_password", password),
        "SERVED_ARTIFACTS_DESTINATION": str(artifacts),
        "ALLOWED_ARTIFACT_ROOTS": str(tmp_path / "home" / "staging"),
        "HOKUSAI_HOME": str(tmp_path / "home"),
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_HTTP": "true",
    }
    return env, password


def stored_values(redis_url: str) -> str:
    """Every string and hash value in the test's Redis database (task results, records, events)."""
    client = redis.Redis.from_url(redis_url)
    parts = []
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"string":
            parts.append(str(client.get(key)))
        elif kind == b"hash":
            parts.append(str(client.hgetall(key)))
        elif kind == b"list":
            parts.append(str(client.lrange(key, 0, -1)))
    return "\n".join(parts)


def test_workers_on_the_database_register_without_calling_the_server_per_job(
    redis_url: str, sk_model: Any, tmp_path: Path, staging: Path
) -> None:
    artifacts = tmp_path / "server" / "artifacts"
    with ExitStack() as stack:
        database_uri = stack.enter_context(fresh_database())
        server_url = stack.enter_context(compose_server(database_uri, artifacts))
        receiver = stack.enter_context(WebhookReceiver(SECRET))
        worker_view = stack.enter_context(RequestCounter(server_url))
        env, password = direct_env(tmp_path, redis_url, worker_view.url, database_uri, artifacts, receiver)
        app = client_app(redis_url)
        worker = stack.enter_context(WorkerProcess(env, tmp_path / "worker", concurrency=2))
        first = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        assert wait_result(app, first, timeout_s=120).state == "SUCCESS", worker.log_tail()
        receiver.wait_for(1, timeout_s=60)
        jobs = [enqueue_registration(job_fields(save_model_dir(sk_model, staging))) for _ in range(4)]
        for job_id in jobs:
            assert wait_result(app, job_id, timeout_s=120).state == "SUCCESS", worker.log_tail()
        events = receiver.wait_for(5, timeout_s=60)
        requests = worker_view.snapshot()
        log = worker.log_text()
        client = MlflowClient(server_url)  # a reader: through the server
        versions = {job_id: versions_of_job(client, job_id) for job_id in [first, *jobs]}
        experiment = client.get_experiment_by_name("hokusai-registry")
        mlflow.set_tracking_uri(server_url)
        last = versions[jobs[-1]][0]
        downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{last.name}/{last.version}",
                                                              dst_path=str(tmp_path / "reader")))  # fmt: skip
        model_uuid = last.tags["model_uuid"]
        logged_location = client.get_logged_model(model_uuid).artifact_location
        redis_text = stored_values(redis_url)

    # 5 jobs on 2 task processes: per process at most one experiment creation (they race for the
    # new experiment at start-up) and one served-artifacts check; nothing per job.
    probes = requests.pop("GET /api/2.0/mlflow-artifacts/artifacts", 0)
    assert 1 <= probes <= 2, "the destination is checked against the server once per process"
    assert 1 <= requests.pop("POST /api/2.0/mlflow/experiments/create", 0) <= 2, "created through the server"
    assert not requests, f"registrations called the server: {dict(requests)}"
    assert all(len(found) == 1 for found in versions.values()), versions
    assert sorted(e["model"]["version"] for e in events) == sorted(str(v[0].version) for v in versions.values())
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:/"), (
        "the experiment was created through the server, which chose its artifact location"
    )
    assert logged_location.startswith("mlflow-artifacts:/"), "the recorded URI is the server's"
    assert (artifacts / experiment.experiment_id / "models" / model_uuid / "artifacts" / "MLmodel").is_file()
    assert (downloaded / "MLmodel").is_file()
    assert "the database of the tracking server" in log
    # after the store was opened: MLflow 3.4 reconfigures logging when it opens a SQL store (put back)
    assert "writing them straight to" in log
    assert password not in log and password not in redis_text, "the database password leaked"


def test_postgresql_killed_between_jobs_during_one_and_at_worker_start_every_job_one_version_one_event(
    redis_url: str, sk_model: Any, tmp_path: Path, staging: Path
) -> None:
    artifacts = tmp_path / "server" / "artifacts"
    with ExitStack() as stack:
        pg = stack.enter_context(devstack.PostgresCluster())  # the test's own: it is killed and restarted
        database_uri = pg.create_database("mlflow")
        server_url = stack.enter_context(compose_server(database_uri, artifacts))
        receiver = stack.enter_context(WebhookReceiver(SECRET))
        env, password = direct_env(tmp_path, redis_url, server_url, database_uri, artifacts, receiver)
        env["REGISTRY_MAX_RETRIES"] = "60"
        app = client_app(redis_url)
        worker = stack.enter_context(WorkerProcess(env, tmp_path / "worker"))
        warm = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        assert wait_result(app, warm, timeout_s=120).state == "SUCCESS", worker.log_tail()

        # 1. PostgreSQL dies between jobs; two jobs arrive while it is down.
        pg.kill()
        waiting = [enqueue_registration(job_fields(save_model_dir(sk_model, staging))) for _ in range(2)]
        wait_until(lambda: "retrying in" in worker.log_text(), timeout_s=60, what="a retry while PostgreSQL is down")
        states_while_down = [app.AsyncResult(job_id).state for job_id in waiting]
        pg.start()
        for job_id in waiting:
            assert wait_result(app, job_id, timeout_s=180).state == "SUCCESS", worker.log_tail()

        # 2. PostgreSQL dies while a job runs: as soon as its LoggedModel row exists.
        models_before = count_rows(database_uri, "SELECT count(*) FROM logged_models")
        running = enqueue_registration(job_fields(save_model_dir(sk_model, staging, padding_mb=32)))
        wait_until(lambda: count_rows(database_uri, "SELECT count(*) FROM logged_models") > models_before, timeout_s=60,
                   interval_s=0.005, what="the job's LoggedModel")  # fmt: skip
        pg.kill()
        state_at_kill = app.AsyncResult(running).state
        retries_before = worker.log_text().count("retrying in")
        wait_until(lambda: worker.log_text().count("retrying in") > retries_before, timeout_s=60,
                   what="the running job to retry")  # fmt: skip
        pg.start()
        assert wait_result(app, running, timeout_s=180).state == "SUCCESS", worker.log_tail()

        # 3. A worker starts while PostgreSQL is down: it starts, and its job waits in retries, not in
        # MLflow's own ~100 s of connection attempts.
        worker.stop()
        pg.kill()
        late = stack.enter_context(WorkerProcess(env, tmp_path / "late-worker"))
        started_job = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        wait_until(lambda: "retrying in" in late.log_text(), timeout_s=20, what="the new worker's first retry")
        pg.start()
        assert wait_result(app, started_job, timeout_s=180).state == "SUCCESS", late.log_tail()

        jobs = [warm, *waiting, running, started_job]
        events = receiver.wait_for(len(jobs), timeout_s=60)
        log = worker.log_text() + late.log_text()
        client = MlflowClient(server_url)
        versions = {job_id: versions_of_job(client, job_id) for job_id in jobs}
        mlflow.set_tracking_uri(server_url)
        experiments = [e.experiment_id for e in client.search_experiments()]
        logged = mlflow.search_logged_models(experiment_ids=experiments, output_format="list")
        failures = failed_jobs.list_failures(redis.Redis.from_url(redis_url))

    assert states_while_down and all(state != "SUCCESS" for state in states_while_down), states_while_down
    assert state_at_kill != "SUCCESS", "the kill must land while the job runs"
    assert all(len(found) == 1 for found in versions.values()), versions
    assert len(events) == len(jobs), "one event per job, none twice"
    assert sorted(e["model"]["version"] for e in events) == sorted(str(v[0].version) for v in versions.values())
    assert [m.model_id for m in logged if m.status == LoggedModelStatus.PENDING] == []
    assert failures == []
    assert "MLflow unavailable" in log or "MLflow store unavailable" in log
    assert "SQLAlchemy database error" not in log, "MLflow's traceback per failed session is not repeated"
    assert password not in log


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        ({"TRACKING_DATABASE_URI": "sqlite:///mlflow.db"}, "must be the tracking server's database"),
        ({"TRACKING_DATABASE_URI": "http://mlflow:5000"}, "must be the tracking server's database"),
        ({"TRACKING_DATABASE_URI": "postgresql://u@db/mlflow"}, "needs MLFLOW_TRACKING_URI to be the http(s) URL"),
    ],
)
def test_a_database_uri_that_cannot_work_is_refused_naming_the_variable(
    environment: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = describe_invalid(raised.value)
    assert problem in message and ("TRACKING_DATABASE_URI" in message or "SETTINGS" in message), message


def test_the_password_file_reaches_the_uri_and_never_its_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "p@ss/word:" + uuid.uuid4().hex
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("TRACKING_DATABASE_URI", "postgresql://mlflow@db:5432/mlflow")
    monkeypatch.setenv("TRACKING_DATABASE_PASSWORD_FILE", secret_file(tmp_path, "pw", password))
    settings = Settings()
    assert settings.tracking_database_url is not None
    parsed = psycopg2.extensions.parse_dsn(settings.tracking_database_url)
    assert parsed["password"] == password and parsed["user"] == "mlflow" and parsed["host"] == "db"
    assert password not in repr(settings) and password not in str(settings.model_dump())
    with pytest.raises(ConfigurationError, match="needs the tracking server's URL"):
        HokusaiModelRegistry("sqlite:///x.db", settings=settings, database_uri=settings.tracking_database_url)


def test_doctor_checks_the_tracking_database_without_showing_its_password(redis_url: str, tmp_path: Path) -> None:
    from tests.test_operations import run_cli

    password = f"db-{uuid.uuid4().hex}"
    # No tracking server runs: doctor must still answer within run_cli's 120 s (with MLflow's own
    # retries, a check of a server that is down took 4 minutes).
    base = {"REDIS_URL": redis_url, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{devstack.free_port()}",
            "TRACKING_DATABASE_PASSWORD_FILE": secret_file(tmp_path, "pw", password)}  # fmt: skip
    with fresh_database() as database_uri:
        up = run_cli("doctor", "--json", env={**base, "TRACKING_DATABASE_URI": database_uri})
    down = run_cli(
        "doctor", env={**base, "TRACKING_DATABASE_URI": f"postgresql://u@127.0.0.1:{devstack.free_port()}/m"}
    )

    checks = {check["name"]: check for check in json_loads(up.stdout)}
    assert checks["tracking database"]["status"] == "ok", checks["tracking database"]
    assert down.returncode == 1 and "fail  tracking database" in down.stdout, down.stdout
    assert "Connection refused" in down.stdout and "fix: start PostgreSQL" in down.stdout
    assert password not in up.stdout + up.stderr + down.stdout + down.stderr
