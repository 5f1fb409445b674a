"""What callers hand the registry: checked before any run starts, so a rejection leaves nothing.

Each check raises ``InvalidInputError`` (a ``ValueError``) naming the argument and the problem.
Ids that go into MLflow filter strings are matched in full against strict patterns here: MLflow
filters have no escaping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hokusai_registry.contract import (
    CONTRIBUTOR_RE,
    MODEL_NAME_RE,
    MODEL_TYPES,
    MODEL_UUID_RE,
    is_metric_name,
    is_plain_path,
    parse_baseline_id,
)
from hokusai_registry.errors import InvalidInputError

__all__ = ["MODEL_NAME_RE", "MODEL_UUID_RE"]  # re-exported for the registry's lookups

_PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9_\-. /]{1,200}$")
_MAX_PARAM_VALUE_CHARS = 250


def check_contributor(address: Any) -> None:
    if not isinstance(address, str) or not CONTRIBUTOR_RE.fullmatch(address):
        raise InvalidInputError(f"contributor must be 0x followed by 40 hex characters, got {address!r}")


def model_type_of_baseline(baseline_id: Any) -> str:
    """The model type a baseline id ``hokusai_{type}_baseline/{version}`` names."""
    try:
        ref = parse_baseline_id(baseline_id)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc
    if ref.model_type is None:
        raise InvalidInputError(
            f"baseline_id must look like 'hokusai_<model_type>_baseline/<version>', got {baseline_id!r}"
        )
    return ref.model_type


def check_metadata(metadata: Mapping[str, Any] | None, max_bytes: int) -> dict[str, Any]:
    """A JSON-serialisable copy of ``metadata`` within the size cap."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        encoded = json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
    if len(encoded.encode()) > max_bytes:
        raise InvalidInputError(f"metadata is {len(encoded.encode())} bytes as JSON; MAX_METADATA_BYTES is {max_bytes}")
    return json.loads(encoded)


def check_model(model: Any) -> None:
    if model is None:
        raise InvalidInputError("model must not be None")


def check_model_type(model_type: Any) -> None:
    if model_type not in MODEL_TYPES:
        raise InvalidInputError(f"model_type must be one of {', '.join(MODEL_TYPES)}; got {model_type!r}")


def check_delta_metrics(delta_metrics: Any) -> dict[str, float]:
    if not isinstance(delta_metrics, Mapping):
        raise InvalidInputError("delta_metrics must be a dict of metric name to number")
    try:
        deltas = {str(key): float(value) for key, value in delta_metrics.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"delta_metrics values must be numbers: {exc}") from exc
    # Checked here: MLflow would reject the name only inside the run, leaving a FAILED run behind.
    bad = [key for key in deltas if not is_metric_name(key)]
    if bad:
        raise InvalidInputError(
            f"delta_metrics names may hold only letters, digits, '_', '-', '.', ' ', ':', '/' and "
            f"must not start with '/' or '..', end with '/' or contain '//': {bad}"
        )
    return deltas


def searchable_params(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Short scalar metadata as params (for search); anything long or nested stays metadata only."""
    params: dict[str, str] = {}
    for key, value in metadata.items():
        if not (_PARAM_KEY_RE.fullmatch(key) and is_plain_path(key)):
            continue
        if isinstance(value, (str, int, float, bool)) and len(str(value)) <= _MAX_PARAM_VALUE_CHARS:
            params[key] = str(value)
    return params
