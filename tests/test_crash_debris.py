"""Crash debris: an attempt cut off mid-upload leaves no PENDING LoggedModel, and no temp copies stay behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
import redis
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from hokusai_registry.contract import RegistrationJob
from producers import enqueue_registration
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job, wait_result
from tests.worker_process import WorkerProcess, wait_until

pytestmark = pytest.mark.slow


def test_a_pending_logged_model_of_a_killed_attempt_is_marked_failed_and_temp_debris_removed(
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

    class Killed(BaseException):  # like SIGKILL: no except-clause of MLflow or ours runs
        pass

    def killed(*_: Any, **__: Any) -> None:
        raise Killed("process died while uploading the model's artifacts")

    registry = HokusaiModelRegistry(tracking_uri)
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "log_model_artifacts", killed)
        with pytest.raises(Killed):  # the worker's first attempt, which marks its start in Redis
            register_job(job, registry, get_settings(), redis_client=redis.Redis.from_url(redis_url))

    def logged() -> list[Any]:
        return list(
            mlflow.search_logged_models(
                experiment_ids=[registry.experiment_id()],
                filter_string=f"tags.job_id = '{job.job_id}'",
                output_format="list",
            )
        )

    [orphan] = logged()
    assert orphan.status == LoggedModelStatus.PENDING

    scratch_root = tmp_path / "tmp"
    debris = scratch_root / "hokusai-worker-999999" / "hokusai-artifact-x"  # a SIGKILLed process's copy
    debris.mkdir(parents=True)
    (debris / "model.pkl").write_bytes(b"partial")
    env = {**worker_env, "TMPDIR": str(scratch_root)}
    with WorkerProcess(env, tmp_path) as worker:
        wait_until(lambda: not debris.parent.exists(), timeout_s=30, what="the dead process's scratch removed")
        enqueue_registration(job)
        result = wait_result(client_app(redis_url), str(job.job_id))
        assert result.state == "SUCCESS", worker.log_tail()
        own = list(scratch_root.glob("hokusai-worker-*"))
        assert own, "the pool process works in its own scratch folder"
        wait_until(lambda: all(not any(folder.iterdir()) for folder in own), timeout_s=10,
                   what="the job's temp copies removed")  # fmt: skip

    statuses = {model.model_id: model.status for model in logged()}
    assert statuses[orphan.model_id] == LoggedModelStatus.FAILED
    assert list(statuses.values()).count(LoggedModelStatus.READY) == 1
    assert LoggedModelStatus.PENDING not in statuses.values()
    [version] = versions_of_job(MlflowClient(tracking_uri), str(job.job_id))
    assert result.result["version"] == str(version.version)
