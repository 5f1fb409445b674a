"""One error tree for the whole product, split by what to do about an error.

    HokusaiError
    ├── PermanentError              do not retry: the same input fails the same way
    │   ├── InvalidInputError       (also a ValueError) bad arguments or job fields
    │   │   ├── NotFoundError           a command named a record that does not exist (failed job, event, ...)
    │   │   │   └── ModelNotFoundError      a lookup named a registered model that does not exist
    │   │   ├── InvalidJobError         a registration job that breaks the contract
    │   │   │   ├── ArtifactRejectedError   artifact URI outside the allow-list, or `..` traversal
    │   │   │   └── ArtifactNotFoundError   the URI is allowed but holds no MLflow model
    │   │   └── SignatureError          malformed signature, or an example that does not match it
    │   ├── ConfigurationError      a setting that cannot work (missing secret, bad URL)
    │   ├── WebhookRejectedError    the endpoint answered a 3xx or 4xx that will not get better
    │   │   └── WebhookEndpointGoneError    410 Gone: the endpoint was removed
    │   └── WebhookDeadLetteredError    a webhook task's event ended dead-lettered (replay it)
    └── RetryableError              try again later: the world may have changed
        ├── RegistryUnavailableError    MLflow unreachable, 5xx, or locked store
        ├── BrokerUnavailableError      Redis unreachable
        └── WebhookDeliveryError        network error, timeout, 408, 429 or 5xx

Library exceptions (mlflow, httpx, redis) are translated at the boundary with
``raise ... from exc`` so the cause is kept. Retry policies are declared once, from
the split: Celery retries ``RetryableError`` and never ``PermanentError``.
"""

from __future__ import annotations


class HokusaiError(Exception):
    """Root of every error this product raises on purpose."""


class PermanentError(HokusaiError):
    """Retrying cannot help; record the failure with its reason."""


class RetryableError(HokusaiError):
    """A transient failure; the same call may succeed later.

    ``retry_after_s`` carries a server's own hint (e.g. ``Retry-After``) when it gave one.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidInputError(PermanentError, ValueError):
    """Bad arguments: the message names the field and what is wrong with it."""


class NotFoundError(InvalidInputError):
    """A command or lookup named something that does not exist: a failed job, a stored event, a model."""


class ModelNotFoundError(NotFoundError):
    """A lookup named a registered model that does not exist (a ``ValueError``, as before the upgrade)."""


class InvalidJobError(InvalidInputError):
    """A registration job that breaks the job contract."""


class SignatureError(InvalidInputError):
    """A malformed model signature, or an input example that does not match it."""


class ArtifactRejectedError(InvalidJobError):
    """An artifact URI whose scheme or local root is not on the allow-list."""


class ArtifactNotFoundError(InvalidJobError):
    """An allowed artifact URI with no MLflow model (no ``MLmodel`` file) behind it."""


class ConfigurationError(PermanentError):
    """A setting that cannot work; raised at start-up, naming the variable."""


class WebhookRejectedError(PermanentError):
    """The endpoint refused the event with a status that retrying will not change."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class WebhookEndpointGoneError(WebhookRejectedError):
    """The endpoint answered 410 Gone: it was removed; fix ``WEBHOOK_URL``, then replay."""


class WebhookDeadLetteredError(PermanentError):
    """A webhook task's event ended in the dead letters: the task fails, naming the event and why.

    One plain message argument, so Celery's JSON result backend (and Flower) keep it whole.
    """


class RegistryUnavailableError(RetryableError):
    """The MLflow tracking server or store could not be reached or answered 5xx."""


class BrokerUnavailableError(RetryableError):
    """Redis could not be reached."""


class WebhookDeliveryError(RetryableError):
    """A delivery attempt failed in a way that may succeed later."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.status_code = status_code
