"""The retry policy, written once: what is retryable, how long to wait, and what a webhook does next.

* **Retryable?** (:func:`is_retryable`) By the error tree and the whole cause chain
  (``hokusai_registry.causes``): a ``PermanentError`` on top never; else yes when any link is a
  ``RetryableError``, a connection error or timeout, a transport library's connection/operational
  error, or an ``MlflowException`` whose code or text says the store is briefly away (MLflow wraps
  a lost connection in errors that look permanent, the real cause only in the chain).
* **How long?** Exponential backoff with jitter and a cap (:func:`backoff_delay`), never shorter
  than the server's ``Retry-After`` (:func:`retry_delay`, :func:`parse_retry_after`). Pure
  functions: nothing sleeps or reads a clock unless asked to (``now`` is a parameter). Attempts
  are counted from 1 (the attempt that just failed).
* **Then what?** A task's next countdown (:func:`task_retry_delay`, for
  ``worker.base_task.HokusaiTask``), and a webhook's next step after a retryable failure
  (:func:`webhook_retry`: give up, a countdown, or the durable schedule, along
  ``WEBHOOK_RETRY_SCHEDULE``: :func:`webhook_retry_waits`), for ``worker.webhooks.delivery``.

MLflow is not imported here (delivery and the CLI's replay stay light): an ``MlflowException`` can
only exist once ``mlflow.exceptions`` is loaded, so its class is looked up there when it is.
"""

from __future__ import annotations

import logging
import random
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from hokusai_registry.causes import cause_chain
from hokusai_registry.errors import InvalidInputError, PermanentError, RetryableError
from hokusai_registry.settings import Settings

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- what is retryable
#: Top-level packages whose connection/operational errors mean "the store is unreachable now".
TRANSPORT_PACKAGES = frozenset(
    {"requests", "urllib3", "sqlalchemy", "psycopg2", "psycopg", "redis", "httpx", "httpcore"}
)
_TRANSIENT_TEXT = (
    "API request to", "Max retries exceeded", "Connection refused", "database is locked",
    "server closed the connection", "could not connect to server", "Connection reset", "timed out",
    "connection to server", "terminating connection", "Temporary failure in name resolution",
)  # fmt: skip
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
_TRANSIENT_NAME_WORDS = ("Connection", "Timeout", "Operational", "Protocol", "Interface")


def is_transport_error(exc: BaseException) -> bool:
    """True when ``exc`` was raised by a store's transport library (``TRANSPORT_PACKAGES``)."""
    return type(exc).__module__.split(".")[0] in TRANSPORT_PACKAGES


def is_mlflow_exception(exc: BaseException) -> bool:
    """``isinstance(exc, MlflowException)``, without importing MLflow (see the module docstring)."""
    mlflow_exception = getattr(sys.modules.get("mlflow.exceptions"), "MlflowException", None)
    return mlflow_exception is not None and isinstance(exc, mlflow_exception)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RetryableError | ConnectionError | TimeoutError):
        return True
    if is_mlflow_exception(exc):
        code = getattr(exc, "error_code", "") or ""
        return code in _TRANSIENT_CODES or any(text in str(exc) for text in _TRANSIENT_TEXT)
    if is_transport_error(exc):
        name = type(exc).__name__
        return any(word in name for word in _TRANSIENT_NAME_WORDS) or any(text in str(exc) for text in _TRANSIENT_TEXT)
    return False


def is_retryable(exc: BaseException) -> bool:
    """Retry ``exc``? Yes when any link of its cause chain is transient; a PermanentError on top never."""
    if isinstance(exc, PermanentError):
        return False
    return any(_transient(link) for link in cause_chain(exc))


# ---------------------------------------------------------------------- how long to wait
Jitter = Literal["full", "equal"]

_DELTA_SECONDS_RE = re.compile(r"^\d+$")
# 2**64 s is far beyond any cap; stops 2**attempt overflowing a float.
_MAX_EXPONENT = 64


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
    jitter: Jitter = "equal",
) -> float:
    """Seconds to wait after failed ``attempt``: ``min(max_s, base_s * 2**(attempt-1))``, jittered.

    ``"equal"`` jitter (the default) waits between half and all of that ceiling, so a struggling
    server always gets at least half the exponential pause; ``"full"`` waits anywhere in
    ``[0, ceiling]`` (spreads a thundering herd best).

    Raises:
        InvalidInputError: ``attempt`` below 1, a non-positive ``base_s`` or ``max_s``, or an
            unknown ``jitter``.
    """
    if attempt < 1:
        raise InvalidInputError(f"attempt must be 1 or more, got {attempt}")
    if base_s <= 0 or max_s <= 0:
        raise InvalidInputError(f"base_s and max_s must be positive, got {base_s} and {max_s}")
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    draw = (rng or random).random()
    if jitter == "full":
        return ceiling * draw
    if jitter == "equal":
        return ceiling / 2 + (ceiling / 2) * draw
    raise InvalidInputError(f"jitter must be 'full' or 'equal', got {jitter!r}")


def retry_delay(
    attempt: int,
    *,
    retry_after_s: float | None,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
    jitter: Jitter = "equal",
) -> float:
    """The backoff delay after ``attempt``, but never shorter than the server's ``Retry-After``.

    The server's wish wins over the cap: the result exceeds ``max_s`` when ``retry_after_s`` does
    (the caller schedules such long waits durably instead of with an in-memory countdown).
    """
    delay = backoff_delay(attempt, base_s=base_s, max_s=max_s, rng=rng, jitter=jitter)
    if retry_after_s is None:
        return delay
    return max(delay, retry_after_s)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for, or None when absent or invalid.

    Accepts delta-seconds (``"120"``) and an HTTP-date (``"Wed, 21 Oct 2026 07:28:00 GMT"``); a
    date in the past means 0. ``now`` defaults to the current UTC time.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _DELTA_SECONDS_RE.match(text):
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        logger.debug("ignoring an unparseable Retry-After header")
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        moment = moment.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (moment - reference).total_seconds())


# ---------------------------------------------------------------------- what comes next
def task_retry_delay(
    exc: BaseException, *, retries: int, max_retries: int | None, base_s: float, max_s: float
) -> float | None:
    """Seconds until a task's next attempt, or None when ``exc`` is not retryable or retries ran out.

    ``retries`` is how many retries the task had so far (Celery's ``request.retries``). Never more
    than ``max_s``: the countdown is held in a worker's memory, and the settings keep ``max_s``
    below the visibility timeout (a longer countdown would be delivered twice). A
    ``RetryableError``'s ``retry_after_s`` is honoured up to that cap.
    """
    if not is_retryable(exc):
        return None
    if max_retries is not None and retries >= max_retries:
        return None
    hint = exc.retry_after_s if isinstance(exc, RetryableError) else None
    return min(max_s, retry_delay(retries + 1, retry_after_s=hint, base_s=base_s, max_s=max_s))


#: Each scheduled wait is lengthened by up to this fraction (never shortened: the horizon holds).
SCHEDULE_JITTER = 0.1
#: Attempts of the deprecated doubling backoff when ``WEBHOOK_MAX_ATTEMPTS`` is unset (the old default).
LEGACY_MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class WebhookRetry:
    """What follows a retryable webhook failure.

    ``give_up``: the attempts ran out (dead-letter it). ``countdown``: a Celery retry after
    ``delay_s`` (at most ``WEBHOOK_BACKOFF_MAX_S``, below the visibility timeout). ``defer``: the
    wait is longer, so it goes to the durable schedule for ``delay_s``.
    """

    action: Literal["give_up", "countdown", "defer"]
    delay_s: float = 0.0


def webhook_retry_waits(settings: Settings) -> tuple[float, ...]:
    """The waits (seconds, before jitter) before each retry of one delivery: the retry schedule.

    ``WEBHOOK_RETRY_SCHEDULE``; with the deprecated ``WEBHOOK_BACKOFF_BASE_S``, the old doubling
    ceilings (capped at ``WEBHOOK_BACKOFF_MAX_S``) instead. ``WEBHOOK_MAX_ATTEMPTS`` (deprecated)
    cuts the schedule, or lengthens it by repeating its last wait.
    """
    base_s = settings.webhook_backoff_base_s
    if base_s is not None:
        retries = (settings.webhook_max_attempts or LEGACY_MAX_ATTEMPTS) - 1
        cap = settings.webhook_backoff_max_s
        return tuple(min(cap, base_s * 2.0 ** min(n, _MAX_EXPONENT)) for n in range(retries))
    waits = settings.webhook_retry_schedule
    if settings.webhook_max_attempts is None:
        return waits
    retries = settings.webhook_max_attempts - 1
    return (waits + waits[-1:] * max(0, retries - len(waits)))[:retries]


def webhook_horizon_s(settings: Settings) -> float:
    """How long a delivery is retried at least, first attempt to last (the waits without jitter)."""
    return sum(webhook_retry_waits(settings))


def webhook_retry(
    attempt: int, *, retry_after_s: float | None, settings: Settings, rng: random.Random | None = None
) -> WebhookRetry:
    """The next step after failed webhook ``attempt``, by :func:`webhook_retry_waits`.

    A scheduled wait gains up to ``SCHEDULE_JITTER`` (the deprecated doubling backoff keeps its
    equal jitter). A receiver's ``Retry-After`` is honoured up to ``WEBHOOK_RETRY_AFTER_MAX_S``: it
    may ask for a long wait, not for a forever. A wait up to ``WEBHOOK_BACKOFF_MAX_S`` is a Celery
    countdown; a longer one is the durable schedule's.
    """
    waits = webhook_retry_waits(settings)
    if attempt > len(waits):
        return WebhookRetry("give_up")
    if retry_after_s is not None:
        retry_after_s = min(retry_after_s, settings.webhook_retry_after_max_s)
    if settings.webhook_backoff_base_s is not None:
        delay_s = retry_delay(
            attempt,
            retry_after_s=retry_after_s,
            base_s=settings.webhook_backoff_base_s,
            max_s=settings.webhook_backoff_max_s,
            rng=rng,
        )
    else:
        delay_s = waits[attempt - 1] * (1 + SCHEDULE_JITTER * (rng or random).random())
        delay_s = max(delay_s, retry_after_s or 0.0)
    return WebhookRetry("countdown" if delay_s <= settings.webhook_backoff_max_s else "defer", delay_s)
