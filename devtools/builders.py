"""The one builder of valid jobs, registration results and webhook events, for tests and benchmarks.

Each builder returns a valid value; keyword ``changes`` replace fields, and :data:`DROP` removes
one, so a test changes exactly one thing and asserts the exact error or effect.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from hokusai_registry.contract import RegistrationJob

WALLET = "0x" + "ab" * 20
#: A value for ``changes`` that removes the field.
DROP: Any = object()
#: An artifact URI for jobs that are built but never validated against a filesystem.
PLACEHOLDER_ARTIFACT_URI = "file:///srv/hokusai/staging/model"


def _apply(fields: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = {**fields, **changes}
    return {key: value for key, value in merged.items() if value is not DROP}


def baseline_fields(artifact_uri: str | Path = PLACEHOLDER_ARTIFACT_URI, /, **changes: Any) -> dict[str, Any]:
    """A valid baseline job's fields (``artifact_uri`` must exist for :func:`validate_job` to pass).

    ``artifact_uri=`` among ``changes`` replaces the positional one, like any other field.
    """
    fields: dict[str, Any] = {
        "kind": "baseline",
        "model_type": "classification",
        "artifact_uri": artifact_uri if artifact_uri is DROP else str(artifact_uri),
        "metadata": {"dataset": "leads-2026-11", "rows": 1200},
        "token_id": "lead-score",
        "tags": {"user_id": "u-42"},
    }
    return _apply(fields, changes)


def improved_fields(artifact_uri: str | Path = PLACEHOLDER_ARTIFACT_URI, /, **changes: Any) -> dict[str, Any]:
    """A valid improved job's fields, on ``hokusai_classification_baseline/1``."""
    improved: dict[str, Any] = {
        "kind": "improved",
        "baseline_id": "hokusai_classification_baseline/1",
        "delta_metrics": {"auroc": 0.02},
        "contributor": WALLET,
    }
    return baseline_fields(artifact_uri, **{**improved, **changes})


def job(**changes: Any) -> RegistrationJob:
    """A :class:`RegistrationJob` (contract rules only; the artifact is not looked at)."""
    return RegistrationJob.model_validate(baseline_fields(**changes))


def registration_result(registered: RegistrationJob | None = None, **changes: Any) -> dict[str, Any]:
    """A registration result as ``worker.registration.job.register_job`` returns it (no signature)."""
    registered = registered or job()
    version = str(changes.pop("version", "3"))
    name = changes.pop("model_name", f"hokusai_{registered.model_type}_baseline")
    model_uuid = changes.pop("model_uuid", f"m-{uuid.uuid5(uuid.NAMESPACE_URL, name + version).hex}")
    result: dict[str, Any] = {
        "model_id": f"{name}/{version}",
        "model_name": name,
        "version": version,
        "run_id": uuid.uuid5(uuid.NAMESPACE_DNS, name + version).hex,
        "model_uuid": model_uuid,
        "model_uri": f"models:/{model_uuid}",
        "metadata": dict(registered.metadata),
        "job": registered.model_dump(mode="json", exclude={"input_example", "metadata"}),
        "job_id": str(registered.job_id),
    }
    return _apply(result, changes)


def event(version: str = "3", *, now: datetime | None = None, **job_changes: Any) -> Any:
    """A ``WebhookEvent`` built by the worker's own builder from :func:`job` and :func:`registration_result`."""
    from worker.webhooks.event import build_event

    registered = job(**job_changes)
    return build_event(registration_result(registered, version=version), registered, now=now)


def save_model_dir(model: Any, parent: Path, *, requirements: list[str] | None = None) -> Path:
    """``model`` saved as an MLflow model folder under ``parent``, as a pipeline stages it."""
    import mlflow.sklearn

    target = parent / f"model-{uuid.uuid4().hex[:8]}"
    mlflow.sklearn.save_model(model, str(target), pip_requirements=requirements or ["scikit-learn"])
    return target
