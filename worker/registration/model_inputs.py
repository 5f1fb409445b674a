"""What callers hand the registry: checked before any run starts, so a rejection leaves nothing.

Each check raises ``InvalidInputError`` (a ``ValueError``) naming the argument and the problem.
Ids that go into MLflow filter strings are matched in full against strict patterns here: MLflow
filters have no escaping.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from hokusai_registry.contract import (
    CONTRIBUTOR_RE,
    METRIC_NAME_HINT,
    MODEL_NAME_RE,
    MODEL_TYPES,
    MODEL_UUID_RE,
    BaselineRef,
    encoded_metadata,
    is_metric_name,
    is_plain_path,
    parse_baseline_id,
)
from hokusai_registry.errors import InvalidInputError

__all__ = ["MODEL_NAME_RE", "MODEL_UUID_RE"]  # re-exported for the registry's lookups

_PARAM_KEY_RE = re.compile(r"^[A-Za-z0-9_\-. /]{1,200}$")
_MAX_PARAM_VALUE_CHARS = 250
_MAX_PARAM_KEY_CHARS = 250


def check_contributor(address: Any) -> None:
    if not isinstance(address, str) or not CONTRIBUTOR_RE.fullmatch(address):
        raise InvalidInputError(f"contributor must be 0x followed by 40 hex characters, got {address!r}")


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


def to_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON types; ``where`` names it in errors (``metadata['a'][0]``).

    The mapping (docs/upgrade.md): numpy scalars -> int / float / bool / str, numpy arrays -> nested
    lists, datetime -> ISO 8601 (naive ones kept naive), date / time -> ISO 8601, Decimal -> its exact
    text (``"1.10"``), Path -> str, set / frozenset -> sorted list (insertion order when unsortable),
    tuple -> list. Non-string keys: str / int / float / bool keys become their JSON text, as
    ``json.dumps`` does. NaN, infinities and anything else raise ``InvalidInputError`` naming the key.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where} is {value}; JSON has no NaN or infinity")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise InvalidInputError(f"{where} has a key of type {type(key).__name__}; keys must be strings")
            text = key if isinstance(key, str) else json.dumps(key)
            out[text] = to_json(item, f"{where}[{text!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidInputError(f"{where} is Decimal({str(value)!r}); JSON has no NaN or infinity")
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    numpy_value = _from_numpy(value, where)
    if numpy_value is not _NOT_NUMPY:
        return numpy_value
    raise InvalidInputError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which cannot be stored as JSON; "
        "convert it to a string, number, list or dict first"
    )


_NOT_NUMPY = object()


def _from_numpy(value: Any, where: str) -> Any:
    if not type(value).__module__.startswith("numpy"):
        return _NOT_NUMPY
    import numpy as np

    if isinstance(value, np.ndarray):
        return to_json(value.tolist(), where)
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, np.generic):
        return to_json(value.item(), where)
    return _NOT_NUMPY


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
    ``contributor_address`` (lower-case) and ``improvement_count``.
    """
    params = {
        "model_type": model_type,
        "is_baseline": str(bool(is_baseline)),
        "registration_time": datetime.now(UTC).isoformat(),
    }
    if baseline_id is not None:
        params["baseline_model_id"] = baseline_id
    if contributor is not None:
        params["contributor_address"] = contributor.lower()
    if improvement_count is not None:
        params["improvement_count"] = str(improvement_count)
    for key, value in searchable_params(metadata).items():
        name = f"metadata_{key}"
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
    bad = [key for key in deltas if not is_metric_name(key)]
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
