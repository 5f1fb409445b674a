"""For pipelines that hold a model object: save it in MLflow format, then enqueue it.

Two ways to hand the model over: a staging folder the workers can read (the default), or, for a
pipeline on another host, an upload to the tracking server's served artifacts
(``mlflow-artifacts:/hokusai-uploads/<job_id>``) when given a tracking server
(``upload_tracking_uri=`` or ``UPLOAD_TRACKING_URI``). mlflow is optional on the producer side:
it is imported inside :func:`save_and_enqueue` only. Staged folders do not pile up: a worker
removes one once its version exists, and each call prunes the staging folder by the jobs' states
(``producers.staging``); a job spooled to the outbox (Redis unreachable) keeps its folder until it is
published.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hokusai_registry import staging
from hokusai_registry.artifact_uri import check_artifact_uri
from hokusai_registry.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    InvalidJobError,
    RegistryUnavailableError,
)
from hokusai_registry.flavors import flavor_for
from hokusai_registry.redaction import redact_url
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.validation import validate_job
from producers.enqueue import enqueue_registration
from producers.outbox import is_spooled
from producers.staging import prune_staging


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional dependency (mlflow) that this call needs is not installed."""


def save_and_enqueue(
    model: Any,
    job_fields: Mapping[str, Any],
    *,
    settings: Settings | None = None,
    staging_dir: str | Path | None = None,
    pip_requirements: list[str] | None = None,
    upload_tracking_uri: str | None = None,
) -> str:
    """Save ``model`` in MLflow format, put it where the workers can read it, and enqueue a job for it.

    With a tracking server (``upload_tracking_uri``, default ``UPLOAD_TRACKING_URI``) the model is
    saved to a temporary folder and uploaded with MLflow's artifact client to the server's served
    artifacts, ``mlflow-artifacts:/hokusai-uploads/<job_id>``, which becomes ``artifact_uri``: no
    run is created and no folder is shared with the workers, which resolve that URI through their
    own ``MLFLOW_TRACKING_URI``. The job is published only after the upload completed.

    Otherwise:
    The model goes to ``<staging_dir>/<job_id>/`` (written to a temporary sibling first, then
    renamed, so the folder is complete or absent); ``artifact_uri`` is set to that folder. Once
    the job is published, the staging folder is pruned (:func:`producers.staging.prune_staging`):
    folders of registered jobs go, those of jobs given up go ``STAGING_RETENTION_S`` after they
    failed (``hokusai-registry jobs retry`` needs them until then), queued and spooled jobs keep theirs.
    When Redis stays unreachable the job is spooled to the outbox like any ``enqueue_registration``
    (and the folder is not pruned: Redis cannot say which jobs are done).

    Args:
        model: a scikit-learn estimator or an ``mlflow.pyfunc.PythonModel``.
        upload_tracking_uri: ``http(s)://`` URL of the stack's MLflow tracking server (with served
            artifacts) to upload to; default ``UPLOAD_TRACKING_URI``; unset: stage locally.
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
        ConfigurationError: ``upload_tracking_uri`` is no http(s) URL.
        RegistryUnavailableError: the upload failed (nothing is published; a partial upload is removed).
        BrokerUnavailableError: the model was saved but Redis stayed unreachable and
            ``HOKUSAI_OUTBOX`` is false (the message gives the folder, to enqueue it again with the
            same job id).
    """
    _require_mlflow()
    if "artifact_uri" in job_fields:
        raise InvalidJobError(
            "invalid registration job: artifact_uri: is set by save_and_enqueue to the saved model's folder; "
            "leave it out"
        )
    settings = settings or get_settings()
    tracking_uri = upload_tracking_uri or settings.upload_tracking_uri
    if tracking_uri:
        return _upload_and_enqueue(model, job_fields, tracking_uri, settings, pip_requirements)
    root = Path(staging_dir).expanduser().resolve() if staging_dir is not None else settings.staging_dir
    # The artifact rules run when the saved folder exists (enqueue_registration validates again).
    draft = validate_job({**job_fields, "artifact_uri": str(root / "pending")}, settings, check_artifact=False)
    target = staging.staged_folder(root, str(draft.job_id))
    fields = {**job_fields, "job_id": str(draft.job_id), "artifact_uri": str(target)}
    job = validate_job(fields, settings, check_artifact=False)
    check_artifact_uri(str(target), settings)  # refuse a staging folder outside ALLOWED_ARTIFACT_ROOTS now
    if target.exists():
        raise InvalidJobError(
            f"invalid registration job: job_id: {job.job_id} is already staged at {target}; "
            "enqueue that folder with enqueue_registration, or use a new job_id"
        )
    requirements = list(pip_requirements or job.pip_requirements or []) or None
    _stage(_saver(model, requirements), target)
    try:
        job_id = enqueue_registration(job, settings=settings)
    except BrokerUnavailableError as exc:
        raise BrokerUnavailableError(
            f"{exc}; the model is saved at {target}: enqueue it again with job_id {job.job_id}"
        ) from exc
    if not is_spooled(settings, job_id):
        prune_staging(settings, staging_dir=root, keep={job_id})
    return job_id


#: Where uploaded models live in the tracking server's artifact store.
UPLOAD_ROOT = "hokusai-uploads"


def _upload_and_enqueue(
    model: Any,
    job_fields: Mapping[str, Any],
    tracking_uri: str,
    settings: Settings,
    pip_requirements: list[str] | None,
) -> str:
    if urlsplit(tracking_uri).scheme not in {"http", "https"}:
        raise ConfigurationError(
            "UPLOAD_TRACKING_URI must be the http(s):// URL of an MLflow tracking server that serves artifacts"
        )
    draft = validate_job({**job_fields, "artifact_uri": f"mlflow-artifacts:/{UPLOAD_ROOT}/pending"}, settings)
    artifact_uri = f"mlflow-artifacts:/{UPLOAD_ROOT}/{draft.job_id}"
    job = validate_job({**job_fields, "job_id": str(draft.job_id), "artifact_uri": artifact_uri}, settings)
    requirements = list(pip_requirements or job.pip_requirements or []) or None
    save = _saver(model, requirements)
    _upload(save, artifact_uri, tracking_uri)
    try:
        return enqueue_registration(job, settings=settings)
    except BrokerUnavailableError as exc:
        raise BrokerUnavailableError(
            f"{exc}; the model is uploaded to {artifact_uri}: enqueue it again with job_id {job.job_id}"
        ) from exc


def _upload(save: Callable[[str], None], artifact_uri: str, tracking_uri: str) -> None:
    """Save into a temporary folder, then upload it with MLflow's artifact client (no run needed)."""
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    server = redact_url(tracking_uri)
    repository = MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri)
    try:
        existing = repository.list_artifacts()
    except Exception as exc:  # MLflow wraps HTTP and connection errors in its own types
        raise RegistryUnavailableError(f"cannot reach the tracking server at {server}: {exc}") from exc
    if existing:
        raise InvalidJobError(
            f"invalid registration job: job_id: {artifact_uri} is already uploaded; enqueue it with "
            "enqueue_registration, or use a new job_id"
        )
    with tempfile.TemporaryDirectory(prefix="hokusai-upload-") as scratch:
        folder = Path(scratch) / "model"
        save(str(folder))
        try:
            repository.log_artifacts(str(folder))
        except Exception as exc:
            with contextlib.suppress(Exception):  # best effort: no published job refers to it
                repository.delete_artifacts()
            raise RegistryUnavailableError(f"uploading the model to {server} failed: {exc}") from exc


def _require_mlflow() -> None:
    try:
        import mlflow.pyfunc  # noqa: F401  (only whether it is installed)
    except ImportError as exc:
        raise MissingDependencyError(
            "save_and_enqueue needs mlflow to save the model: pip install mlflow (or save the model "
            "yourself and call enqueue_registration with its folder as artifact_uri)"
        ) from exc


def _saver(model: Any, requirements: list[str] | None) -> Callable[[str], None]:
    """A function that saves ``model`` with its flavor (the core's one rule) into a new folder."""
    flavor = flavor_for(model)

    def save(path: str) -> None:
        flavor.module.save_model(
            path=path,
            **{flavor.model_keyword: model},
            pip_requirements=requirements or flavor.default_requirements(),
        )

    return save


def _stage(save: Callable[[str], None], target: Path) -> None:
    """Save into a temporary sibling of ``target``, then rename it (complete or absent)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = staging.scratch_folder(target.parent, target.name)
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
