"""Staged model folders do not pile up: real workers, real Redis, real MLflow; no mocks, no eager mode.

A worker removes ``$HOKUSAI_HOME/staging/<job_id>`` once the version exists (and nothing else);
``save_and_enqueue`` prunes its staging folder by the jobs' states: a failed job's folder stays
``STAGING_RETENTION_S`` for ``jobs retry``, a queued job's folder stays.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import states
from mlflow.tracking import MlflowClient

from devtools.builders import improved_fields
from hokusai_app.retry import retry_failed_job
from hokusai_registry import failed_jobs
from hokusai_registry import staging as staging_layout
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, RegistrationJob
from hokusai_registry.redis_client import connect
from hokusai_registry.settings import Settings, get_settings
from producers import enqueue_registration, job_status, save_and_enqueue, wait_for_job
from producers.staging import StagedJobState, prune_staging, staged_folder_fate
from tests.queue_helpers import client_app, save_model_dir, versions_of_job
from tests.support import free_port
from tests.worker_process import WorkerProcess, wait_until

BASELINE = {"kind": "baseline", "model_type": "classification", "token_id": "lead-score"}
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
DAY_S = 24 * 3600


def _improved_on_a_missing_baseline() -> dict[str, Any]:
    """An improved job the producer accepts and the worker refuses for good (its baseline is not in MLflow)."""
    fields = improved_fields()
    del fields["artifact_uri"]
    return fields


# ---------------------------------------------------------------------------- the rules, without Redis
@pytest.mark.parametrize(
    ("job", "written_days_ago", "removed"),
    [
        pytest.param(StagedJobState(states.SUCCESS), 0, True, id="registered: at once"),
        pytest.param(StagedJobState(states.PENDING, enqueued_at=NOW - timedelta(days=30)), 30, False, id="queued"),
        pytest.param(StagedJobState(states.STARTED), 30, False, id="running"),
        pytest.param(StagedJobState(states.RETRY, enqueued_at=NOW - timedelta(days=30)), 30, False, id="retrying"),
        pytest.param(
            StagedJobState(states.FAILURE, NOW - timedelta(days=9), given_up_at=NOW - timedelta(days=6)),
            9, False, id="failed, within retention",
        ),
        pytest.param(
            StagedJobState(states.FAILURE, NOW - timedelta(days=9), given_up_at=NOW - timedelta(days=8)),
            9, True, id="failed, past retention",
        ),
        pytest.param(
            StagedJobState(states.FAILURE, NOW - timedelta(hours=1), given_up_at=NOW - timedelta(days=8)),
            9, False, id="failed, then retried: queued again",
        ),
        pytest.param(StagedJobState("UNKNOWN"), 6, False, id="unknown to Redis, recent"),
        pytest.param(StagedJobState("UNKNOWN"), 8, True, id="unknown to Redis, past retention"),
        pytest.param(None, 6, False, id="interrupted save, recent"),
        pytest.param(None, 8, True, id="interrupted save, past retention"),
    ],
)  # fmt: skip
def test_staged_folder_fate(job: StagedJobState | None, written_days_ago: int, removed: bool) -> None:
    reason = staged_folder_fate(job, written_at=NOW - timedelta(days=written_days_ago), now=NOW, retention_s=7 * DAY_S)
    assert (reason is not None) == removed, reason


# ---------------------------------------------------------------------------- the worker removes its own
def test_worker_removes_the_staged_folder_once_the_version_exists_and_nothing_else(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    other_root = tmp_path / "shared-models"
    monkeypatch.setenv("ALLOWED_ARTIFACT_ROOTS", f"{staging},{other_root}")
    get_settings.cache_clear()
    elsewhere_id = str(uuid.uuid4())
    elsewhere = save_model_dir(sk_model, other_root).rename(other_root / elsewhere_id)  # named like a job
    not_named_by_job = save_model_dir(sk_model, staging)  # under the staging root, not <job_id>
    env = {**worker_env, "ALLOWED_ARTIFACT_ROOTS": os.environ["ALLOWED_ARTIFACT_ROOTS"]}
    with WorkerProcess(env, tmp_path) as worker:
        job_id = save_and_enqueue(sk_model, BASELINE)
        folder = staging / job_id
        assert wait_for_job(job_id, timeout_s=90)["state"] == "SUCCESS", worker.log_tail()
        assert not folder.exists(), "the staged folder of a registered job is left behind"
        others = [
            enqueue_registration({**BASELINE, "artifact_uri": str(elsewhere), "job_id": elsewhere_id}),
            enqueue_registration({**BASELINE, "artifact_uri": str(not_named_by_job)}),
        ]
        assert [wait_for_job(other, timeout_s=90)["state"] for other in others] == ["SUCCESS"] * 2, worker.log_tail()
        assert (elsewhere / "MLmodel").is_file() and (not_named_by_job / "MLmodel").is_file()

        # A second delivery of the registered job (a producer's duplicate publish) finds its version.
        job = RegistrationJob.model_validate({**BASELINE, "job_id": job_id, "artifact_uri": str(folder)})
        app = client_app(redis_url)
        app.AsyncResult(job_id).forget()
        app.send_task(REGISTER_TASK, args=[job.model_dump(mode="json")], task_id=job_id, queue=REGISTRATION_QUEUE)
        again = wait_for_job(job_id, timeout_s=90)
        assert again["state"] == "SUCCESS", worker.log_tail()
        assert again["result"]["replayed"] is True
    assert len(versions_of_job(MlflowClient(tracking_uri), job_id)) == 1
    assert "removed the staged model folder" in worker.log_text()


# ---------------------------------------------------------------------------- the producer prunes
def test_a_failed_jobs_folder_stays_for_the_retention_then_goes(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    retention_s = 4
    monkeypatch.setenv("STAGING_RETENTION_S", str(retention_s))
    get_settings.cache_clear()
    with WorkerProcess(worker_env, tmp_path) as worker:
        failed_id = save_and_enqueue(sk_model, _improved_on_a_missing_baseline())
        assert wait_for_job(failed_id, timeout_s=90)["state"] == "FAILURE", worker.log_tail()
        record = failed_jobs.get_failure(connect(redis_url), failed_id)
        assert record is not None
        assert (staging / failed_id / "MLmodel").is_file(), "a failed job's folder must stay for jobs retry"

        next_id = save_and_enqueue(sk_model, BASELINE)  # prunes: the failed job is within its retention
        assert (staging / failed_id).is_dir()
        assert wait_for_job(next_id, timeout_s=90)["state"] == "SUCCESS", worker.log_tail()

    calls: list[datetime] = []

    def pruned() -> bool:
        calls.append(datetime.now(UTC))
        prune_staging()
        return not (staging / failed_id).exists()

    wait_until(pruned, timeout_s=30, interval_s=0.2, what="the failed job's folder to be pruned")
    assert calls[-1] >= record.failed_at + timedelta(seconds=retention_s - 1), "pruned before its retention ended"
    assert sorted(staging.iterdir()) == []


def test_a_queued_or_retried_jobs_folder_stays_past_the_retention(
    worker_env: dict[str, str], redis_url: str, tracking_uri: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    with WorkerProcess(worker_env, tmp_path) as worker:
        retried = save_and_enqueue(sk_model, _improved_on_a_missing_baseline())
        assert wait_for_job(retried, timeout_s=90)["state"] == "FAILURE", worker.log_tail()
    queued = save_and_enqueue(sk_model, BASELINE)  # no worker now: it stays queued
    retry_failed_job(retried, get_settings())  # `jobs retry`: published again, same artifact_uri

    later = datetime.now(UTC) + timedelta(seconds=get_settings().staging_retention_s * 2)
    assert prune_staging(now=later) == []
    assert (staging / queued / "MLmodel").is_file() and (staging / retried / "MLmodel").is_file()
    assert job_status(queued)["state"] == "PENDING"


def test_a_folder_redis_does_not_know_goes_after_the_retention(redis_url: str, staging: Path, sk_model: Any) -> None:
    """Never enqueued (Redis was down after the save) or its records expired; and an interrupted save."""
    orphan = save_model_dir(sk_model, staging).rename(staging / str(uuid.uuid4()))
    interrupted = save_model_dir(sk_model, staging).rename(staging_layout.scratch_folder(staging, str(uuid.uuid4())))
    foreign = save_model_dir(sk_model, staging)  # not the staging layout: never touched
    retention = timedelta(seconds=get_settings().staging_retention_s)

    assert prune_staging(now=datetime.now(UTC) + retention - timedelta(minutes=1)) == []
    assert sorted(prune_staging(now=datetime.now(UTC) + retention + timedelta(minutes=1))) == sorted(
        [orphan, interrupted]
    )
    assert sorted(staging.iterdir()) == [foreign]


def test_pruning_never_fails_the_caller_when_redis_is_down(
    staging: Path, sk_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    folder = save_model_dir(sk_model, staging).rename(staging / str(uuid.uuid4()))
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", enqueue_retry_s=0)
    caplog.set_level(logging.WARNING, logger="producers.staging")
    started = time.monotonic()
    assert prune_staging(settings, now=datetime.now(UTC) + timedelta(days=365)) == []
    assert time.monotonic() - started < 10
    assert folder.is_dir()
    assert "cannot read job states from Redis" in caplog.text
