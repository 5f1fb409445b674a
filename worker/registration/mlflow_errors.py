"""Translate MLflow and store failures into the product's error tree, at the MLflow boundary.

MLflow often wraps a transport failure in an error that looks permanent: ``register_model``
reports a lost connection while it reads the new version's LoggedModel as
``INVALID_PARAMETER_VALUE`` ("Failed to get logged model ..."), the real cause only in the
chained exception. Whether a failure is transient is the retry policy's judgement, by the whole
cause chain (``worker.retry_policy.is_retryable``): a transient one, or any error of a store's
transport library, becomes ``RegistryUnavailableError`` (retryable) with a clean message;
anything else MLflow raises goes on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException

from hokusai_registry.errors import InvalidInputError, RegistryUnavailableError
from worker.retry_policy import is_retryable, is_transport_error


@contextmanager
def mlflow_boundary(action: str) -> Iterator[None]:
    """Translate MLflow/transport failures into the product's error tree (by the cause chain)."""
    try:
        yield
    except (InvalidInputError, RegistryUnavailableError):
        raise
    except Exception as exc:
        # A store library's own error (a sqlite file that is not a database, an HTTP error) is
        # reported as the store being unusable too, with a clean message, never a traceback.
        if is_retryable(exc) or is_transport_error(exc):
            if isinstance(exc, MlflowException):
                raise RegistryUnavailableError(f"MLflow unavailable while {action}: {exc.message}") from exc
            raise RegistryUnavailableError(f"MLflow store unavailable while {action}: {exc}") from exc
        raise
