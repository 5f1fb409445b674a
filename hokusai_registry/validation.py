"""The one job validation: both the producer (at enqueue) and the worker (on receipt) call it.

:func:`validate_job` applies every rule that needs no MLflow (the contract's field rules, the
metadata cap from ``MAX_METADATA_BYTES``, the artifact allow-list and, for a local model, that it
exists with an ``MLmodel`` file). The worker adds only what needs MLflow (the baseline exists).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from hokusai_registry.artifact_uri import check_job_artifact
from hokusai_registry.contract import RegistrationJob
from hokusai_registry.errors import ArtifactNotFoundError, ArtifactRejectedError, InvalidJobError
from hokusai_registry.settings import Settings, get_settings

_MAX_SHOWN_INPUT_CHARS = 80
PREFIX = "invalid registration job: "


def describe_errors(exc: ValidationError) -> list[str]:
    """One ``"<field>: <problem>"`` line per pydantic error (whole-job rules name their fields themselves)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        shown = error.get("input")
        if error["type"] not in {"missing", "extra_forbidden"} and isinstance(shown, (str, int, float, bool)):
            text = repr(shown)
            if len(text) <= _MAX_SHOWN_INPUT_CHARS:
                message = f"{message} (got {text})"
        lines.append(f"{field}: {message}" if field else message)
    return lines


def validate_job(
    job_or_fields: RegistrationJob | Mapping[str, Any],
    settings: Settings | None = None,
    *,
    check_artifact: bool = True,
) -> RegistrationJob:
    """The job as a validated :class:`RegistrationJob`, by every rule that needs no MLflow.

    Args:
        job_or_fields: a job, or its fields (``job_id`` is generated when absent).
        settings: limits and allow-lists; default: read from the environment.
        check_artifact: False only while the artifact is still being written (``save_and_enqueue``).
    Raises:
        InvalidJobError: the fields break the contract; the message names every bad field, e.g.
            ``invalid registration job: contributor: must be 0x followed by 40 hex characters``.
        ArtifactRejectedError: (an ``InvalidJobError``) ``artifact_uri`` is outside the allow-list.
        ArtifactNotFoundError: (an ``InvalidJobError``) a local ``artifact_uri`` holds no MLflow model.
    """
    settings = settings or get_settings()
    if isinstance(job_or_fields, RegistrationJob):
        fields: Any = job_or_fields.model_dump(mode="json")
    elif isinstance(job_or_fields, Mapping):
        fields = dict(job_or_fields)
    else:
        raise InvalidJobError(
            f"{PREFIX}job: must be a RegistrationJob or a mapping of fields, not {type(job_or_fields).__name__}"
        )
    try:
        job = RegistrationJob.model_validate(fields, context={"max_metadata_bytes": settings.max_metadata_bytes})
    except ValidationError as exc:
        raise InvalidJobError(PREFIX + "; ".join(describe_errors(exc))) from exc
    if check_artifact:
        try:
            check_job_artifact(job.artifact_uri, settings)
        except ArtifactRejectedError as exc:
            raise ArtifactRejectedError(f"{PREFIX}artifact_uri: {exc}") from exc
        except ArtifactNotFoundError as exc:
            raise ArtifactNotFoundError(f"{PREFIX}artifact_uri: {exc}") from exc
    return job
