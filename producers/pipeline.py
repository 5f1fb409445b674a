"""For pipelines that hold a model object: save it in MLflow format, then enqueue its folder.

mlflow is optional on the producer side: it is imported inside :func:`save_and_enqueue` only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

from hokusai_registry.artifact_uri import check_artifact_uri
from hokusai_registry.errors import BrokerUnavailableError, ConfigurationError, InvalidJobError
from hokusai_registry.flavors import flavor_for
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.validation import validate_job
from producers.enqueue import enqueue_registration


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency (mlflow) that this call needs is not installed."""


def save_and_enqueue(
    model: Any,
    job_fields: Mapping[str, Any],
    *,
    settings: Settings | None = None,
    staging_dir: str | Path | None = None,
    pip_requirements: list[str] | None = None,
) -> str:
    """Save ``model`` under the staging folder in MLflow format and enqueue a job for it.

    The model goes to ``<staging_dir>/<job_id>/`` (written to a temporary sibling first, then
    renamed, so the folder is complete or absent); ``artifact_uri`` is set to that folder.

    Args:
        model: a scikit-learn estimator or an ``mlflow.pyfunc.PythonModel``.
        job_fields: every :class:`~hokusai_registry.contract.RegistrationJob` field except ``artifact_uri``.
        settings: default: read from the environment.
        staging_dir: default: ``settings.staging_dir`` (``$HOKUSAI_HOME/staging``). Workers accept
            local artifacts only under ``ALLOWED_ARTIFACT_ROOTS`` (default: that same folder), so
            a different folder must be on the workers' list and readable by them.
        pip_requirements: the model's requirements; default: the job's ``pip_requirements``, else
            the flavor's defaults. Always explicit, so MLflow runs no inference subprocess.
    Returns:
        The job id.
    Raises:
        MissingDependencyError: mlflow is not installed.
        InvalidJobError: bad job fields, ``artifact_uri`` given, or the job id is already staged;
            nothing is saved or published then.
        InvalidInputError: ``model`` is of an unsupported kind.
        BrokerUnavailableError: the model was saved but Redis stayed unreachable (the message
            gives the folder, to enqueue it again with the same job id).
    """
    _require_mlflow()
    if "artifact_uri" in job_fields:
        raise InvalidJobError(
            "invalid registration job: artifact_uri: is set by save_and_enqueue to the saved model's folder; "
            "leave it out"
        )
    settings = settings or get_settings()
    root = Path(staging_dir).expanduser().resolve() if staging_dir is not None else settings.staging_dir
    # The artifact rules run when the saved folder exists (enqueue_registration validates again).
    draft = validate_job({**job_fields, "artifact_uri": str(root / "pending")}, settings, check_artifact=False)
    target = root / str(draft.job_id)
    fields = {**job_fields, "job_id": str(draft.job_id), "artifact_uri": str(target)}
    job = validate_job(fields, settings, check_artifact=False)
    check_artifact_uri(str(target), settings)  # refuse a staging folder outside ALLOWED_ARTIFACT_ROOTS now
    if target.exists():
        raise InvalidJobError(
            f"invalid registration job: job_id: {job.job_id} is already staged at {target}; "
            "enqueue that folder with enqueue_registration, or use a new job_id"
        )
    requirements = list(pip_requirements or job.pip_requirements or []) or None
    _save_model(model, target, requirements)
    try:
        return enqueue_registration(job, settings=settings)
    except BrokerUnavailableError as exc:
        raise BrokerUnavailableError(
            f"{exc}; the model is saved at {target}: enqueue it again with job_id {job.job_id}"
        ) from exc


def _require_mlflow() -> None:
    try:
        import mlflow.pyfunc  # noqa: F401  (only whether it is installed)
    except ImportError as exc:
        raise MissingDependencyError(
            "save_and_enqueue needs mlflow to save the model: pip install mlflow (or save the model "
            "yourself and call enqueue_registration with its folder as artifact_uri)"
        ) from exc


def _save_model(model: Any, target: Path, requirements: list[str] | None) -> None:
    """Save with the model's flavor into a temporary sibling of ``target``, then rename it."""
    flavor = flavor_for(model)

    def save(path: str) -> None:
        flavor.module.save_model(
            path=path,
            **{flavor.model_keyword: model},
            pip_requirements=requirements or flavor.default_requirements(),
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.{uuid4().hex[:8]}.tmp"
    try:
        save(str(scratch))
        try:
            os.rename(scratch, target)
        except OSError as exc:  # another process staged the same job id meanwhile
            raise InvalidJobError(
                f"invalid registration job: job_id: {target.name} is already staged at {target}"
            ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
