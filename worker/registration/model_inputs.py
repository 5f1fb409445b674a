"""What callers hand the registry: checked before any run starts, so a rejection leaves nothing.

Each check raises ``InvalidInputError`` (a ``ValueError``) naming the argument and the problem.
Ids that go into MLflow filter strings are matched in full against strict patterns here: MLflow
filters have no escaping.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hokusai_registry.contract import (
    CONTRIBUTOR_HINT,
    METRIC_NAME_HINT,
    MODEL_NAME_RE,
    MODEL_TYPES,
    MODEL_UUID_RE,
    BaselineRef,
    bad_metric_names,
    encoded_metadata,
    is_contributor_address,
    is_plain_path,
    parse_baseline_id,
)
from hokusai_registry.errors import InvalidInputError
from hokusai_registry.json_values import to_json
from worker.registration import tags

__all__ = ["MODEL_NAME_RE", "MODEL_UUID_RE"]  # re-exported for the registry's lookups

_PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9_\-. /]{1,200}$")
_MAX_PARAM_VALUE_CHARS = 250
_MAX_PARAM_KEY_CHARS = 250


def check_contributor(address: Any) -> None:
    if not is_contributor_address(address):
        raise InvalidInputError(f"contributor {CONTRIBUTOR_HINT}, got {address!r}")


def parse_baseline(baseline_id: Any) -> BaselineRef:
    """The parts of a baseline id ``<name>_baseline/<version>`` (the contract's one rule)."""
    try:
        return parse_baseline_id(baseline_id)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc


def check_metadata(metadata: Mapping[str, Any] | None, max_bytes: int) -> dict[str, Any]:
    """A JSON copy of ``metadata`` within the size cap, common Python values converted (see :func:`to_json`)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
    converted = to_json(metadata, "metadata")
    try:
        encoded = encoded_metadata(converted, max_bytes)  # the contract's rule: JSON, within MAX_METADATA_BYTES
    except ValueError as exc:
        raise InvalidInputError(f"metadata {exc}") from exc
    return dict(json.loads(encoded))


def legacy_run_params(
    *,
    model_type: str,
    is_baseline: bool,
    metadata: Mapping[str, Any],
    baseline_id: str | None = None,
    contributor: str | None = None,
    improvement_count: int | None = None,
) -> dict[str, str]:
    """Run params under the names the pre-upgrade registry logged, so old run searches still match.

    ``model_type``, ``is_baseline`` (``"True"`` / ``"False"``), ``registration_time`` (UTC ISO 8601),
    ``metadata_<key>`` for each short scalar metadata value (see :func:`searchable_params`; long or
    nested values stay metadata only), and for improved models ``baseline_model_id``,
    ``contributor_address`` (in the case given, as the old class logged it) and ``improvement_count``.
    """
    params = {
        tags.PARAM_MODEL_TYPE: model_type,
        tags.PARAM_IS_BASELINE: tags.PARAM_TRUE if is_baseline else tags.PARAM_FALSE,
        tags.PARAM_REGISTRATION_TIME: datetime.now(UTC).isoformat(),
    }
    if baseline_id is not None:
        params[tags.PARAM_BASELINE_ID] = baseline_id
    if contributor is not None:
        params[tags.PARAM_CONTRIBUTOR] = contributor
    if improvement_count is not None:
        params[tags.PARAM_IMPROVEMENT_COUNT] = str(improvement_count)
    for key, value in searchable_params(metadata).items():
        name = f"{tags.PARAM_METADATA_PREFIX}{key}"
        if len(name) <= _MAX_PARAM_KEY_CHARS:
            params[name] = value
    return params


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
    bad = bad_metric_names(deltas)
    if bad:
        raise InvalidInputError(f"delta_metrics: {METRIC_NAME_HINT}: {bad}")
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
