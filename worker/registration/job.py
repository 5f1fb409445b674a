"""Register one queued job, idempotently. The Celery task is a thin wrapper around this.

The same ``job_id`` processed twice yields one model version, and the second run returns the
first's result. When an earlier attempt of the job started (``attempts.begin_attempt``):

1. a version tagged with the job id exists → describe it and return;
2. a finished LoggedModel tagged with the job id exists (a crash between ``log_model`` and
   ``register_model``) → register that model, do not log another;
3. otherwise mark any unfinished (PENDING) LoggedModel of this job FAILED (an attempt killed
   or cut off mid-upload left it);

then (and at once on a first delivery, which skips these look-ups) fetch the artifact, log it as
is, register it.

Once the version exists, the job's staged model folder is removed when it is
``<this worker's staging root>/<job_id>`` (``hokusai_registry.staging``); any other artifact a job
names is never touched. A later delivery of the same job finds its version with
:func:`registered_result` and does not need the folder.

Runs of the same job never overlap: the caller holds a per-job lock (see ``worker.tasks``).
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import redis
from mlflow.entities import LoggedModelStatus

from hokusai_registry import staging
from hokusai_registry.contract import BaselineRef, RegistrationJob
from hokusai_registry.errors import InvalidJobError, SignatureError
from hokusai_registry.settings import Settings
from worker.registration import artifacts, attempts, signatures, tags
from worker.registration.mlflow_errors import mlflow_boundary
from worker.registration.model_log import ModelToLog
from worker.registration.registry import HokusaiModelRegistry
from worker.webhooks import mlflow_record

logger = logging.getLogger(__name__)

#: Job fields left out of the result's copy of the job: the example may be large, and the
#: metadata is already the result's own ``metadata``.
_JOB_FIELDS_NOT_COPIED = {"input_example", "metadata"}


def register_job(
    job: RegistrationJob,
    registry: HokusaiModelRegistry,
    settings: Settings,
    *,
    redis_client: redis.Redis | None = None,
) -> dict[str, Any]:
    """Register ``job`` (exactly one model version per job id) and return its result.

    ``job`` has passed :func:`hokusai_registry.validation.validate_job` (the task calls it); this
    adds the checks that need MLflow. ``redis_client`` holds the attempt markers (the task passes
    the worker's); without it there is no marker, and every call searches for an earlier attempt's work.
    Once the version exists, the job's staged folder in ``settings.staging_dir`` is removed.

    Raises:
        InvalidInputError: the job cannot succeed (missing baseline, missing artifact, bad signature).
        RegistryUnavailableError: MLflow could not be reached; the caller retries.
        BrokerUnavailableError: Redis could not be reached to mark the attempt; the caller retries.
    """
    job_id = str(job.job_id)
    first = redis_client is not None and attempts.begin_attempt(redis_client, job_id, ttl_s=settings.result_expires_s)
    if not first:
        replayed = registered_result(job, registry)
        if replayed is not None:
            remove_staged_folder(job, settings)
            return replayed

    baseline = job.baseline  # parsed once, by the contract's validator
    if baseline is not None:
        check_baseline_exists(job, baseline, registry)
    target: dict[str, Any] = {
        "model_name": baseline.improved_name if baseline else tags.baseline_model_name(job.model_type),
        "model_type": job.model_type,
        "is_baseline": job.kind == "baseline",
        "metadata": job.metadata,
        "git": _git(job),
        "baseline_id": job.baseline_id,
        "contributor": job.contributor,
        # the job's webhook fields, so `webhooks reconcile` can rebuild the event from MLflow alone
        "extra_version_tags": {tags.TAG_JOB_ID: job_id, **mlflow_record.job_record_tags(job)},
        "extra_run_tags": {tags.RUN_TAG_TRACEPARENT: job.trace_context} if job.trace_context else None,
    }
    logged = None if first else _previous_attempt_model(registry, job_id)
    if logged is not None:
        logger.info("resuming job: logged model %s exists, registering it", logged.model_uuid)
        result = registry.register_logged(
            None, signature=None, input_example=None, existing_model_info=logged, **target
        )
        remove_staged_folder(job, settings)
        return _job_result(result, job, replayed=False)

    with artifacts.fetched_model(job.artifact_uri) as model_dir:
        config = artifacts.read_model_config(model_dir)
        flavor = artifacts.CopiedModelFlavor(model_dir, config, job.pip_requirements)
        # validate_serving_input would load (unpickle) the model; the job's input example is
        # validated against the signature, and the copied model keeps its own.
        to_log = ModelToLog(flavor, {"validate_serving_input": False}, log_input_example=False)

        result = registry.register_logged(
            to_log,
            signature=_effective_signature(job, config),
            input_example=job.input_example,
            extra_logged_model_tags={tags.TAG_JOB_ID: job_id},
            metrics=job.delta_metrics,
            **target,
        )
    remove_staged_folder(job, settings)
    return _job_result(result, job, replayed=False)


def registered_result(job: RegistrationJob, registry: HokusaiModelRegistry) -> dict[str, Any] | None:
    """The result of ``job`` if a version tagged with its job id exists (an earlier delivery made it), else None.

    Raises:
        RegistryUnavailableError: MLflow could not be reached.
    """
    existing = registry.find_version_by_tag(tags.TAG_JOB_ID, str(job.job_id))
    if existing is None:
        return None
    logger.info("job already registered as %s/%s; returning that result", existing.name, existing.version)
    return _job_result(registry.describe_version(existing), job, replayed=True)


def remove_staged_folder(job: RegistrationJob, settings: Settings) -> None:
    """Remove the job's staged model folder, if its artifact is ``<settings.staging_dir>/<job_id>``.

    Called once the version exists. A failure to remove is logged, never raised: the version is
    registered, and the producer's pruning (``producers.staging``) removes the folder later.
    """
    folder = staging.own_staged_folder(settings.staging_dir, str(job.job_id), job.artifact_uri)
    if folder is None:
        return
    try:
        if staging.remove_folder(folder):
            logger.info("removed the staged model folder %s: its version exists", folder)
    except OSError as exc:
        logger.warning("could not remove the staged model folder %s: %s", folder, exc)


def check_baseline_exists(job: RegistrationJob, baseline: BaselineRef, registry: HokusaiModelRegistry) -> None:
    """Refuse an improved job whose baseline version (``baseline``: its parsed id) is missing or of another type.

    Raises:
        InvalidJobError: the baseline version does not exist, or its ``model_type`` tag differs.
        RegistryUnavailableError: MLflow could not be reached.
    """
    version = registry.find_version(baseline.name, baseline.version)
    if version is None:
        raise InvalidJobError(
            f"invalid registration job: baseline_id: {job.baseline_id} does not exist in MLflow "
            f"(no version {baseline.version} of registered model {baseline.name!r})"
        )
    recorded = (version.tags or {}).get(tags.TAG_MODEL_TYPE)
    if recorded and recorded != job.model_type:
        raise InvalidJobError(
            f"invalid registration job: model_type: {job.model_type!r} does not match baseline "
            f"{job.baseline_id}, which is tagged model_type={recorded!r}"
        )


def _effective_signature(job: RegistrationJob, config: Any) -> Any:
    """The job's signature, else the model's own, else one inferred from the input example."""
    parsed = signatures.parse_signature(job.signature)
    if parsed is not None:
        return parsed
    if config.signature is not None:
        return config.signature
    if job.input_example:
        from mlflow.models import infer_signature

        try:
            return infer_signature(model_input=signatures.example_frame(job.input_example))
        except Exception as exc:  # mlflow raises several types for uninferable data
            raise SignatureError(f"cannot infer a signature from input_example: {exc}") from exc
    return None


def _logged_models_of(registry: HokusaiModelRegistry, job_id: str) -> list[Any]:
    """LoggedModels tagged with ``job_id`` (a UUID: validate_job checked it, so safe in the filter)."""
    return list(
        mlflow.search_logged_models(
            experiment_ids=[registry.experiment_id()],
            filter_string=f"tags.{tags.TAG_JOB_ID} = '{job_id}'",
            output_format="list",
        )
    )


def _previous_attempt_model(registry: HokusaiModelRegistry, job_id: str) -> Any:
    """What an earlier attempt of this job left, from one search of its LoggedModels.

    Returns the ``ModelInfo`` of the oldest READY one (logged, not yet registered), or None after
    marking FAILED every one still PENDING (its attempt died mid-upload).
    """
    with mlflow_boundary("looking for a previous attempt's logged model"):
        models = _logged_models_of(registry, job_id)
        ready = [m for m in models if m.status == LoggedModelStatus.READY]
        if ready:
            oldest = min(ready, key=lambda m: m.creation_timestamp)
            return mlflow.models.get_model_info(f"models:/{oldest.model_id}")
        for model in models:
            if model.status == LoggedModelStatus.PENDING:
                registry.client.finalize_logged_model(model.model_id, status=LoggedModelStatus.FAILED)
                logger.warning("logged model %s of an interrupted attempt marked FAILED", model.model_id)
        return None


def job_of_result(result: dict[str, Any]) -> RegistrationJob:
    """The job a registration result came from (what the webhook step needs of it)."""
    return RegistrationJob.model_validate({**result["job"], "metadata": result.get("metadata") or {}})


def _git(job: RegistrationJob) -> dict[str, str]:
    return {key: value for key, value in (job.git.model_dump() if job.git else {}).items() if value}


def _job_result(result: dict[str, Any], job: RegistrationJob, *, replayed: bool) -> dict[str, Any]:
    job_fields = job.model_dump(mode="json", exclude=_JOB_FIELDS_NOT_COPIED)
    result = {**result, "job": job_fields, "job_id": str(job.job_id), "replayed": replayed}
    if job.kind == "improved":
        result.update(baseline_id=job.baseline_id, contributor=job.contributor, delta_metrics=job.delta_metrics)
    return result
