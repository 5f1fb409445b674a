"""Turn job fields into a :class:`RegistrationJob`, or an :class:`InvalidJobError` naming each field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from hokusai_registry.contract import RegistrationJob
from hokusai_registry.errors import InvalidJobError

_MAX_SHOWN_INPUT_CHARS = 80


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


def validate_job(job_or_fields: RegistrationJob | Mapping[str, Any]) -> RegistrationJob:
    """The job as a validated :class:`RegistrationJob`.

    Raises:
        InvalidJobError: the fields break the contract; the message names every bad field,
            e.g. ``invalid registration job: contributor: must be 0x followed by 40 hex characters``.
    """
    if isinstance(job_or_fields, RegistrationJob):
        return job_or_fields
    if not isinstance(job_or_fields, Mapping):
        raise InvalidJobError(
            f"invalid registration job: job: must be a RegistrationJob or a mapping of fields, "
            f"not {type(job_or_fields).__name__}"
        )
    try:
        return RegistrationJob.model_validate(dict(job_or_fields))
    except ValidationError as exc:
        raise InvalidJobError("invalid registration job: " + "; ".join(describe_errors(exc))) from exc
