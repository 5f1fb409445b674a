"""Translate MLflow and store failures into the product's error tree, by the whole cause chain.

MLflow often wraps a transport failure in an error that looks permanent: ``register_model``
reports a lost connection while it reads the new version's LoggedModel as
``INVALID_PARAMETER_VALUE`` ("Failed to get logged model ..."), the real cause only in the
chained exception. So every link of ``__cause__``/``__context__`` is looked at: a connection
error, timeout, 5xx answer or locked sqlite file anywhere in the chain makes it retryable
(``RegistryUnavailableError``); anything else MLflow raises goes on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.exceptions import MlflowException

from hokusai_registry.errors import InvalidInputError, PermanentError, RegistryUnavailableError, RetryableError

#: Top-level packages whose connection/operational errors mean "the store is unreachable now".
_TRANSPORT_PACKAGES = {"requests", "urllib3", "sqlalchemy", "psycopg2", "psycopg", "redis", "httpx", "httpcore"}
_TRANSIENT_TEXT = (
    "API request to", "Max retries exceeded", "Connection refused", "database is locked",
    "server closed the connection", "could not connect to server", "Connection reset", "timed out",
    "connection to server", "terminating connection", "Temporary failure in name resolution",
)  # fmt: skip
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def cause_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling (each once)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "") or ""
        return code in _TRANSIENT_CODES or any(text in str(exc) for text in _TRANSIENT_TEXT)
    if type(exc).__module__.split(".")[0] in _TRANSPORT_PACKAGES:
        name = type(exc).__name__
        return any(word in name for word in ("Connection", "Timeout", "Operational", "Protocol", "Interface")) or any(
            text in str(exc) for text in _TRANSIENT_TEXT
        )
    return False


def is_retryable(exc: BaseException) -> bool:
    """Retry ``exc``? Yes when any link of its cause chain is transient; a PermanentError on top never."""
    if isinstance(exc, PermanentError):
        return False
    return any(_transient(link) for link in cause_chain(exc))


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
        if is_retryable(exc) or type(exc).__module__.split(".")[0] in _TRANSPORT_PACKAGES:
            if isinstance(exc, MlflowException):
                raise RegistryUnavailableError(f"MLflow unavailable while {action}: {exc.message}") from exc
            raise RegistryUnavailableError(f"MLflow store unavailable while {action}: {exc}") from exc
        raise
