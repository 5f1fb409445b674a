"""Translate MLflow and store failures into the product's error tree, at the boundary.

Connection errors, 5xx answers and a locked sqlite file are retryable
(``RegistryUnavailableError``); anything else MLflow raises goes on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException

from hokusai_registry.errors import InvalidInputError, RegistryUnavailableError


@contextmanager
def mlflow_boundary(action: str) -> Iterator[None]:
    """Translate MLflow/transport failures into the product's error tree."""
    try:
        yield
    except (InvalidInputError, RegistryUnavailableError):
        raise
    except MlflowException as exc:
        if _is_transient(exc):
            raise RegistryUnavailableError(f"MLflow unavailable while {action}: {exc.message}") from exc
        raise
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise RegistryUnavailableError(f"MLflow unreachable while {action}: {exc}") from exc
    except Exception as exc:  # requests / sqlalchemy errors, without importing either eagerly
        if type(exc).__module__.split(".")[0] in {"requests", "urllib3", "sqlalchemy"}:
            raise RegistryUnavailableError(f"MLflow store unavailable while {action}: {exc}") from exc
        raise


def _is_transient(exc: MlflowException) -> bool:
    code = getattr(exc, "error_code", "") or ""
    text = str(exc)
    if code in {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}:
        return "database is locked" in text or "API request" in text or code != "INTERNAL_ERROR"
    return "API request to" in text or "Max retries exceeded" in text or "Connection refused" in text
