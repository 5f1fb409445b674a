"""Metadata values as JSON: the one conversion of common Python values, for both sides.

Imports only the standard library (numpy is looked at only when a value comes from it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from hokusai_registry.errors import InvalidInputError


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
