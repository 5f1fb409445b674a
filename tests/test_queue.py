"""The registration queue end to end: real Redis, real `celery -A worker worker` processes, real MLflow."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest
import redis
from mlflow.tracking import MlflowClient

from hokusai_registry import failed_jobs
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, RegistrationJob
from producers import enqueue_registration
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.worker_process import WorkerProcess, wait_until
from worker.webhooks.store import EventStore

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------- tests
def test_enqueue_registers_one_tagged_version_and_chains_webhook(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    model_dir = save_model_dir(sk_model, staging)
    with WorkerProcess(worker_env, tmp_path):
        job_id = enqueue_registration(job_fields(model_dir))
        app = client_app(redis_url)
        result = wait_result(app, job_id)
        assert result.state == "SUCCESS", result.traceback
        registered = result.result
        wait_until(lambda: result.children, timeout_s=10, what="the chained webhook task")
        webhook = result.children[0]
        wait_until(lambda: webhook.ready(), timeout_s=30, what="the webhook task to finish")

    client = MlflowClient(tracking_uri)
    versions = versions_of_job(client, job_id)
    assert len(versions) == 1
    version = versions[0]
    assert version.name == "hokusai_classification_baseline"
    assert registered["version"] == str(version.version)
    assert version.tags["model_uuid"] == registered["model_uuid"]
    assert version.tags["job_id"] == job_id
    assert registered["flavors"] == ["python_function", "sklearn"]
    assert registered["metadata"]["notes"] == "x" * 2000
    # the chained task received the registration result with the ModelVersion number; with no
    # WEBHOOK_URL its event is kept as a dead letter (for a replay), so the task ends FAILURE
    assert webhook.state == "FAILURE" and "WEBHOOK_URL is not set" in str(webhook.result)
    (dead,) = EventStore(redis.Redis.from_url(redis_url)).list_dead_letters()
    assert dead.event.event_id in str(webhook.result)
    assert dead.event.version == str(version.version) and dead.event.job_id == job_id


def test_worker_never_unpickles_and_reuses_model_requirements(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    model_dir = save_model_dir(sk_model, staging)
    # A pickle that would fail to load proves the worker never loads the model it re-logs.
    (model_dir / "model.pkl").write_bytes(b"not a pickle: loading this would raise")
    (model_dir / "requirements.txt").write_text("scikit-learn==1.0.0-from-the-model\n")
    with WorkerProcess(worker_env, tmp_path) as worker:
        job_id = enqueue_registration(job_fields(model_dir))
        result = wait_result(client_app(redis_url), job_id)
        assert result.state == "SUCCESS", worker.log_tail()
    mlflow.set_tracking_uri(tracking_uri)
    logged = mlflow.artifacts.download_artifacts(f"{result.result['artifact_path']}/requirements.txt")
    assert Path(logged).read_text() == "scikit-learn==1.0.0-from-the-model\n"


def test_same_job_enqueued_twice_yields_one_version(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    job = RegistrationJob.model_validate(job_fields(save_model_dir(sk_model, staging)))
    app = client_app(redis_url)
    with WorkerProcess(worker_env, tmp_path, concurrency=2):
        enqueue_registration(job)
        enqueue_registration(job)  # a producer re-sending the same job (same job_id)
        wait_until(
            lambda: (
                len(app.backend.client.keys("celery-task-meta-*")) >= 1
                and app.AsyncResult(str(job.job_id)).state == "SUCCESS"
            ),
            timeout_s=60,
            what="the job to succeed",
        )
        # both deliveries ran; wait for the queue to drain before counting
        wait_until(lambda: app.backend.client.llen(REGISTRATION_QUEUE) == 0, timeout_s=30, what="queue drained")
        first = app.AsyncResult(str(job.job_id)).result
    versions = versions_of_job(MlflowClient(tracking_uri), str(job.job_id))
    assert len(versions) == 1
    assert first["version"] == str(versions[0].version)


def test_crash_between_log_and_register_registers_the_logged_model(
    worker_env: dict[str, str],
    redis_url: str,
    tracking_uri: str,
    staging: Path,
    sk_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hokusai_registry.settings import get_settings
    from worker.registration.job import register_job
    from worker.registration.registry import HokusaiModelRegistry

    job = RegistrationJob.model_validate(job_fields(save_model_dir(sk_model, staging)))

    class Crash(BaseException):
        pass

    def crash(*_: Any, **__: Any) -> None:
        raise Crash("process died after log_model, before register_model")

    registry = HokusaiModelRegistry(tracking_uri)
    with monkeypatch.context() as patch:
        patch.setattr(mlflow, "register_model", crash)
        with pytest.raises(Crash):  # the worker's first attempt, which marks its start in Redis
            register_job(job, registry, get_settings(), redis_client=redis.Redis.from_url(redis_url))
    client = MlflowClient(tracking_uri)
    leftover = mlflow.search_logged_models(
        experiment_ids=[registry.experiment_id()], filter_string=f"tags.job_id = '{job.job_id}'", output_format="list"
    )
    assert len(leftover) == 1 and versions_of_job(client, str(job.job_id)) == []

    with WorkerProcess(worker_env, tmp_path) as worker:
        enqueue_registration(job)
        result = wait_result(client_app(redis_url), str(job.job_id))
        assert result.state == "SUCCESS", worker.log_tail()
    versions = versions_of_job(client, str(job.job_id))
    assert len(versions) == 1
    assert result.result["model_uuid"] == leftover[0].model_id  # the first attempt's model, not a new one
    logged = mlflow.search_logged_models(
        experiment_ids=[registry.experiment_id()], filter_string=f"tags.job_id = '{job.job_id}'", output_format="list"
    )
    assert len(logged) == 1


def test_sigkill_during_registration_then_restart_completes_once(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    # Short visibility timeout so the restarted worker recovers the unacked message quickly.
    env = {**worker_env, "VISIBILITY_TIMEOUT_S": "10", "TASK_TIME_LIMIT_S": "8"}
    model_dir = save_model_dir(sk_model, staging, padding_mb=128)  # widens the window to kill in
    app = client_app(redis_url)
    worker = WorkerProcess(env, tmp_path).start()
    try:
        job_id = enqueue_registration(job_fields(model_dir))
        wait_until(lambda: app.AsyncResult(job_id).state == "STARTED", timeout_s=60, interval_s=0.01)
        worker.kill()
        assert app.AsyncResult(job_id).state == "STARTED", "the kill must land while the job runs"
        assert app.backend.client.hlen("unacked") == 1, "the message must survive the crash unacked"
    finally:
        worker.kill()
    with WorkerProcess(env, tmp_path) as restarted:
        result = wait_result(app, job_id, timeout_s=90)
        assert result.state == "SUCCESS", restarted.log_tail()
    versions = versions_of_job(MlflowClient(tracking_uri), job_id)
    assert len(versions) == 1
    assert result.result["version"] == str(versions[0].version)


def test_200_jobs_on_two_worker_processes(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    model_dir = save_model_dir(sk_model, staging)
    app = client_app(redis_url)
    with WorkerProcess(worker_env, tmp_path) as first, WorkerProcess(worker_env, tmp_path) as second:
        job_ids = [enqueue_registration(job_fields(model_dir, metadata={"n": n})) for n in range(200)]
        wait_until(
            lambda: all(app.AsyncResult(j).state in {"SUCCESS", "FAILURE"} for j in job_ids),
            timeout_s=240,
            interval_s=0.5,
            what="200 jobs to finish",
        )
        states = {app.AsyncResult(j).state for j in job_ids}
        assert states == {"SUCCESS"}, first.log_tail() + second.log_tail()
        assert "succeeded" in first.log_text() and "succeeded" in second.log_text(), "both workers took jobs"
    versions = MlflowClient(tracking_uri).search_model_versions("name = 'hokusai_classification_baseline'")
    assert len(versions) == 200
    assert sorted(v.tags["job_id"] for v in versions) == sorted(job_ids)
    assert len({v.version for v in versions}) == 200


BAD_JOBS = {
    "missing_field": (lambda d: {k: v for k, v in job_fields(d).items() if k != "model_type"}, "model_type"),
    "bad_signature": (lambda d: job_fields(d, signature={"inputs": '[{"type": "no-such-type", "name": "f0"}]'}),
                      "signature"),
    "example_mismatch": (
        lambda d: job_fields(
            d,
            signature={"inputs": '[{"type": "double", "name": "f0"}, {"type": "double", "name": "f1"}]'},
            input_example=[{"f0": "not a number", "f1": 0.2}],
        ),
        "does not match the signature",
    ),
    "forbidden_uri": (lambda d: job_fields(d, artifact_uri="file:///etc/passwd"), "outside the allowed roots"),
    "traversal_uri": (lambda d: job_fields(d, artifact_uri=f"{d}/../../../etc"), "'..'"),
    "unknown_scheme": (lambda d: job_fields(d, artifact_uri="gopher://host/model"), "scheme 'gopher'"),
    "missing_artifact": (lambda d: job_fields(d, artifact_uri=str(d.parent / "no-such-model")), "not a folder"),
}  # fmt: skip


def test_bad_jobs_fail_permanently_with_a_recorded_reason(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    import redis

    model_dir = save_model_dir(sk_model, staging)
    app = client_app(redis_url)
    sent: dict[str, tuple[str, str]] = {}
    with WorkerProcess(worker_env, tmp_path) as worker:
        for kind, (build, expected) in BAD_JOBS.items():
            job = {"job_id": str(uuid.uuid4()), **build(model_dir)}
            # published raw, by name, as a foreign or older producer could: the worker validates again
            app.send_task(REGISTER_TASK, args=[job], task_id=job["job_id"], queue=REGISTRATION_QUEUE)
            sent[kind] = (job["job_id"], expected)
        for kind, (job_id, expected) in sent.items():
            result = wait_result(app, job_id)
            assert result.state == "FAILURE", f"{kind}: {worker.log_tail()}"
            assert expected in str(result.result), f"{kind}: {result.result!r}"
        log = worker.log_text()
    store = redis.Redis.from_url(redis_url)
    for kind, (job_id, expected) in sent.items():
        record = failed_jobs.get_failure(store, job_id)  # the worker stopped warm: its on_failure calls finished
        assert record is not None, kind
        assert expected in record.reason, kind
        assert record.attempts == 1, f"{kind} was retried"
    assert "retrying in" not in log
    assert MlflowClient(tracking_uri).search_model_versions("") == []


def test_mlflow_down_then_up_job_completes(redis_url: str, staging: Path, sk_model: Any, tmp_path: Path) -> None:
    from tests.mlflow_server import running_mlflow_server
    from tests.support import free_port

    port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "REDIS_URL": redis_url,
        "REGISTRY_MAX_RETRIES": "100",
    }
    app = client_app(redis_url)
    with WorkerProcess(env, tmp_path) as worker:
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        wait_until(lambda: "retrying in" in worker.log_text(), timeout_s=60, what="a retry while MLflow is down")
        assert app.AsyncResult(job_id).state != "SUCCESS"
        with running_mlflow_server(port=port, artifacts_dir=tmp_path / "served") as server_uri:
            result = wait_result(app, job_id, timeout_s=120)
            assert result.state == "SUCCESS", worker.log_tail()
            versions = MlflowClient(server_uri).search_model_versions(f"tags.job_id = '{job_id}'")
    assert len(versions) == 1


def test_mlflow_never_recovers_job_recorded_as_failed(
    redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    import redis

    from tests.support import free_port

    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "REDIS_URL": redis_url,
        "REGISTRY_MAX_RETRIES": "2",
    }
    app = client_app(redis_url)
    with WorkerProcess(env, tmp_path) as worker:
        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        result = wait_result(app, job_id, timeout_s=120)
        assert result.state == "FAILURE", worker.log_tail()
        # recorded before Celery stored FAILURE (test_records checks the order of the writes)
        record = failed_jobs.get_failure(redis.Redis.from_url(redis_url), job_id)
        assert record is not None
    assert record.error_type.endswith("RegistryUnavailableError")
    assert record.attempts == 3


def test_models_and_file_uris_are_fetched_and_relogged(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        source = mlflow.sklearn.log_model(sk_model, name="source", pip_requirements=["scikit-learn"])
    uris = {"models": source.model_uri, "file": save_model_dir(sk_model, staging).as_uri()}
    app = client_app(redis_url)
    with WorkerProcess(worker_env, tmp_path) as worker:
        job_ids = {
            kind: enqueue_registration(job_fields(Path("unused"), artifact_uri=uri)) for kind, uri in uris.items()
        }
        results = {kind: wait_result(app, job_id) for kind, job_id in job_ids.items()}
        for kind, result in results.items():
            assert result.state == "SUCCESS", f"{kind}: {worker.log_tail()}"
    for kind, result in results.items():
        assert result.result["flavors"] == ["python_function", "sklearn"], kind
        assert result.result["model_uuid"] != source.model_uuid, "a new LoggedModel, not the source"
        assert len(versions_of_job(MlflowClient(tracking_uri), job_ids[kind])) == 1
