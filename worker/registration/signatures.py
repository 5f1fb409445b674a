"""Model signatures: parse, check an input example against one, and describe one as JSON Schema.

Everything here runs *before* a run is started, so a rejected registration leaves nothing behind.
"""

from __future__ import annotations

import json
from typing import Any

from hokusai_registry.errors import SignatureError

# MLflow column types → JSON Schema (the marketplace's ``api_schema`` mapping).
_JSON_SCHEMA_TYPES: dict[str, dict[str, str]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "long": {"type": "integer"},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "boolean": {"type": "boolean"},
    "binary": {"type": "string", "format": "byte"},
    "datetime": {"type": "string", "format": "date-time"},
}


def parse_signature(signature: Any) -> Any:
    """Return a ``ModelSignature`` from one, or from its ``to_dict()`` form; None stays None.

    Raises:
        SignatureError: the signature is malformed; the message says how.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature

    if signature is None or isinstance(signature, ModelSignature):
        return signature
    if not isinstance(signature, dict):
        raise SignatureError(
            f"signature must be a ModelSignature or its to_dict() form, not {type(signature).__name__}"
        )
    if not signature.get("inputs"):
        raise SignatureError("signature has no 'inputs' (expected the JSON string from ModelSignature.to_dict())")
    try:
        return ModelSignature.from_dict(signature)
    except (TypeError, KeyError, ValueError, AttributeError, MlflowException) as exc:
        raise SignatureError(f"signature is malformed: {type(exc).__name__}: {exc}") from exc


def signature_to_json(signature: Any) -> str | None:
    """The signature as a JSON string (what registration results carry), or None."""
    return None if signature is None else json.dumps(signature.to_dict(), sort_keys=True)


def check_example(example: Any, signature: Any) -> None:
    """Check an input example against ``signature.inputs``.

    JSON examples carry ints where a schema says double; those are widened first (never
    narrowed: a float for a long column, or text for a number, is a mismatch).

    Raises:
        SignatureError: naming the missing column or the type that does not match.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.models import validate_schema

    frame = example_frame(example)
    schema = signature.inputs
    if schema is None:
        return
    if schema.has_input_names() and not schema.is_tensor_spec():
        expected = set(schema.input_names())
        missing = [name for name in schema.required_input_names() if name not in frame.columns]
        if missing:
            raise SignatureError(
                f"input example does not match the signature: missing required column(s) {missing}; "
                f"the signature expects {sorted(expected)}"
            )
        frame = _widen_to_schema(frame, schema)
    try:
        validate_schema(frame, schema)
    except MlflowException as exc:
        raise SignatureError(f"input example does not match the signature: {exc.message}") from exc
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"input example does not match the signature: {exc}") from exc


def example_frame(example: Any) -> Any:
    """An input example (JSON records, a dict of columns, or a DataFrame) as a DataFrame."""
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        return example
    if isinstance(example, dict):
        example = [example] if not any(isinstance(v, list) for v in example.values()) else example
    try:
        return pd.DataFrame(example)
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"input example cannot be read as a table of records: {exc}") from exc


def _widen_to_schema(frame: Any, schema: Any) -> Any:
    import numpy as np
    from pandas.api.types import is_integer_dtype

    widened = frame.copy()
    for spec in schema.inputs:
        name = getattr(spec, "name", None)
        if name is None or name not in widened.columns:
            continue
        type_name = getattr(getattr(spec, "type", None), "name", None)
        column = widened[name]
        # pandas' own check: np.issubdtype raises TypeError on extension dtypes (pandas 3 text columns).
        if type_name in {"double", "float"} and is_integer_dtype(column.dtype):
            widened[name] = column.astype("float64" if type_name == "double" else "float32")
        elif type_name == "long" and is_integer_dtype(column.dtype):
            widened[name] = column.astype("int64")
        elif (
            type_name == "integer"
            and column.dtype == np.int64
            and column.between(np.iinfo(np.int32).min, np.iinfo(np.int32).max).all()
        ):
            widened[name] = column.astype("int32")
    return widened


def api_schema(signature: Any) -> dict[str, Any] | None:
    """``{"inputSchema": ..., "outputSchema": ...}`` (JSON Schema) for the marketplace, or None.

    Only column-based schemas map onto JSON Schema objects; a tensor-based side is omitted.
    """
    if signature is None:
        return None
    result: dict[str, Any] = {}
    for key, schema in (("inputSchema", signature.inputs), ("outputSchema", signature.outputs)):
        described = _schema_to_json_schema(schema)
        if described is not None:
            result[key] = described
    return result or None


def _schema_to_json_schema(schema: Any) -> dict[str, Any] | None:
    if schema is None or schema.is_tensor_spec():
        return None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for index, spec in enumerate(schema.inputs):
        name = spec.name if spec.name is not None else str(index)
        type_name = getattr(getattr(spec, "type", None), "name", None)
        properties[name] = dict(_JSON_SCHEMA_TYPES.get(type_name or "", {}))
        if getattr(spec, "required", True):
            required.append(name)
    described: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        described["required"] = required
    return described
