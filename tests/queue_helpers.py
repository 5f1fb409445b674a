"""Helpers for tests that run jobs through real workers: stage a model, build a job, read results."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from celery import Celery
from mlflow.tracking import MlflowClient

from devtools.builders import baseline_fields
from hokusai_registry.contract import CELERY_WIRE_SETTINGS
from tests.worker_process import wait_until


def save_model_dir(model: Any, parent: Path, *, padding_mb: int = 0) -> Path:
    """An MLflow model folder, as a pipeline would stage it (explicit requirements: no inference)."""
    import mlflow.sklearn

    target = parent / f"model-{uuid.uuid4().hex[:8]}"
    mlflow.sklearn.save_model(model, str(target), pip_requirements=["scikit-learn"])
    if padding_mb:
        (target / "padding.bin").write_bytes(b"\0" * padding_mb * 1024 * 1024)
    return target


def client_app(redis_url: str) -> Celery:
    app = Celery("test-client", broker=redis_url, backend=redis_url)
    app.conf.update(CELERY_WIRE_SETTINGS)
    return app


def wait_result(app: Celery, task_id: str, timeout_s: float = 60) -> Any:
    result = app.AsyncResult(task_id)
    wait_until(lambda: result.state in {"SUCCESS", "FAILURE"}, timeout_s=timeout_s, what=f"task {task_id}")
    return result


def versions_of_job(client: MlflowClient, job_id: str) -> list[Any]:
    return client.search_model_versions(f"tags.job_id = '{job_id}'")


def job_fields(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A valid baseline job on ``model_dir`` (devtools.builders), with metadata past MLflow's param limit."""
    defaults = {"metadata": {"dataset": "leads-2026-11", "notes": "x" * 2000}, "token_id": "LEADS"}
    return baseline_fields(model_dir, **{**defaults, **overrides})
