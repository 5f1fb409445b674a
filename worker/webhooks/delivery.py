"""Delivering webhook events: one HTTP attempt, the URL/secret policy, and one recorded attempt.

* :func:`deliver` sends one attempt and classifies the answer: 2xx is success; network errors,
  timeouts, 408, 429 and 5xx raise ``WebhookDeliveryError`` (retryable, with the server's
  ``Retry-After``); 3xx (redirects are never followed) and other 4xx raise
  ``WebhookRejectedError``, and 410 its subclass ``WebhookEndpointGoneError``.
* the URL/secret rules (``check_webhook_config`` ...) live in ``hokusai_registry.webhook_policy``
  (re-exported here); every attempt checks the URL again.
* :func:`send_stored_event` is what the ``emit_webhook`` task calls: it attempts a stored event,
  records the attempt, and says what happens next (done, retry after a countdown, deferred to the
  durable schedule, or dead-lettered), as the retry policy (``worker.retry_policy``) decides.
  The caller may pass ``on_attempt``, called with the HTTP status (None: no answer) of every
  attempt made: the task layer counts its metrics so, and this module knows nothing of them.

This module never logs secrets or URLs: its lines carry the event id, the status and the attempt.
(httpx's own request log line passes through ``hokusai_registry.log.RedactUrlFilter``.)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx

from hokusai_registry.errors import (
    ConfigurationError,
    WebhookDeliveryError,
    WebhookEndpointGoneError,
    WebhookRejectedError,
)
from hokusai_registry.settings import Settings
from hokusai_registry.webhook_policy import check_webhook_config, check_webhook_url, webhook_secret
from worker.retry_policy import parse_retry_after, webhook_retry
from worker.webhooks.event import WebhookEvent
from worker.webhooks.signing import signature_headers
from worker.webhooks.store import EventRecord, EventStore

logger = logging.getLogger(__name__)

__all__ = ["check_webhook_config", "check_webhook_url", "deliver", "send_stored_event", "webhook_secret"]

RETRYABLE_STATUSES = frozenset({408, 429})
SendStatus = Literal["delivered", "already_delivered", "retry", "deferred", "dead_lettered", "missing"]
#: Called after every HTTP attempt with its status code (None: no answer came).
AttemptObserver = Callable[[int | None], None]


@dataclass(frozen=True)
class DeliveryResult:
    """A successful (2xx) attempt."""

    event_id: str
    status_code: int
    attempt: int
    elapsed_s: float


@dataclass(frozen=True)
class SendOutcome:
    """What became of one attempt of a stored event, and what the caller must do next.

    ``retry``: call the task again after ``countdown_s``. ``deferred``: nothing to do now; the
    event sits in the durable schedule until ``due_at``. Every other status is final.
    """

    event_id: str
    status: SendStatus
    attempt: int = 0
    status_code: int | None = None
    countdown_s: float | None = None
    due_at: datetime | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (a Celery task result)."""
        data = asdict(self)
        data["due_at"] = self.due_at.isoformat() if self.due_at else None
        return data


# ---------------------------------------------------------------------- one HTTP attempt
def deliver(
    event: WebhookEvent,
    *,
    url: str,
    secret: str | None,
    client: httpx.Client | None = None,
    settings: Settings,
    attempt: int = 1,
) -> DeliveryResult:
    """POST ``event.body`` once to ``url``, signed, with the event's idempotency key.

    ``client`` may be shared between calls; timeouts and ``follow_redirects=False`` are applied
    per request either way. ``attempt`` is only for the log.

    Raises:
        WebhookDeliveryError: network error, timeout, 408, 429 or 5xx (``retry_after_s`` set
            when the server sent ``Retry-After``).
        WebhookEndpointGoneError: 410.
        WebhookRejectedError: 3xx or another 4xx.
        ConfigurationError: the URL or the secret breaks the policy.
    """
    check_webhook_url(url, settings)
    headers = signature_headers(
        event.body, event.event_id, secret, int(time.time()), allow_unsigned=settings.webhook_allow_unsigned
    )
    timeout = httpx.Timeout(settings.webhook_read_timeout_s, connect=settings.webhook_connect_timeout_s)
    started = time.monotonic()
    try:
        if client is None:
            with httpx.Client(timeout=timeout, follow_redirects=False) as own_client:
                response = own_client.post(url, content=event.body, headers=headers)
        else:
            response = client.post(url, content=event.body, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.RequestError as exc:
        logger.warning("webhook %s attempt %s failed: %s", event.event_id, attempt, type(exc).__name__)
        raise WebhookDeliveryError(f"webhook not delivered: {type(exc).__name__}: {exc}") from exc
    logger.info("webhook %s attempt %s answered %s", event.event_id, attempt, response.status_code)
    _raise_for_status(response)
    return DeliveryResult(event.event_id, response.status_code, attempt, time.monotonic() - started)


def _raise_for_status(response: httpx.Response) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    if code in RETRYABLE_STATUSES or code >= 500:
        raise WebhookDeliveryError(
            f"endpoint answered {code}",
            status_code=code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
        )
    if code == 410:
        raise WebhookEndpointGoneError("endpoint gone: answered 410; fix WEBHOOK_URL, then replay", status_code=code)
    hint = " (redirects are not followed)" if 300 <= code < 400 else ""
    raise WebhookRejectedError(f"endpoint rejected the event: answered {code}{hint}", status_code=code)


# ---------------------------------------------------------------------- a recorded attempt
def deliver_and_record(
    store: EventStore,
    record: EventRecord,
    *,
    settings: Settings,
    client: httpx.Client | None = None,
    on_attempt: AttemptObserver | None = None,
) -> DeliveryResult:
    """Attempt a stored event at ``WEBHOOK_URL``; record the attempt; mark it delivered on 2xx.

    The attempt goes into the event's history with its start time (UTC), its HTTP status or
    error, and its duration, and ``on_attempt`` hears of it. Shared by :func:`send_stored_event`
    and ``worker.webhooks.replay``. Raises what :func:`deliver` raises, after recording the
    failed attempt.
    """
    observe = on_attempt or _ignore_attempt
    if settings.webhook_url is None:
        raise ConfigurationError("WEBHOOK_URL is not set: there is nowhere to send webhook events")
    event = record.event
    started_at, started = datetime.now(UTC), time.monotonic()
    try:
        result = deliver(
            event,
            url=settings.webhook_url,
            secret=webhook_secret(settings),
            client=client,
            settings=settings,
            attempt=record.attempts + 1,
        )
    except (WebhookDeliveryError, WebhookRejectedError) as exc:
        observe(exc.status_code)
        store.record_attempt(
            event.event_id,
            status_code=exc.status_code,
            error=str(exc),
            at=started_at,
            duration_s=round(time.monotonic() - started, 4),
        )
        raise
    observe(result.status_code)
    store.record_attempt(
        event.event_id, status_code=result.status_code, at=started_at, duration_s=round(result.elapsed_s, 4)
    )
    store.mark_delivered(event.event_id)
    return result


def send_stored_event(
    store: EventStore,
    event_id: str,
    *,
    settings: Settings,
    client: httpx.Client | None = None,
    rng: random.Random | None = None,
    on_attempt: AttemptObserver | None = None,
) -> SendOutcome:
    """One attempt of a stored, pending event, and the decision that follows it.

    Retryable failures retry as :func:`worker.retry_policy.webhook_retry` says (never before the
    server's ``Retry-After``): as a countdown when it is at most ``WEBHOOK_BACKOFF_MAX_S`` (which
    settings keep below the visibility timeout), else through the durable schedule (``store.defer``).
    After ``WEBHOOK_MAX_ATTEMPTS`` attempts, on a permanent rejection, or when the ``WEBHOOK_*``
    settings cannot send it (nothing is sent then), the event is dead-lettered, so an operator
    can replay it once the cause is fixed. Events already delivered or dead-lettered are not
    sent again (replay those).

    Raises:
        BrokerUnavailableError: Redis is unreachable.
    """
    record = store.get(event_id)
    if record is None or record.state != "pending":
        store.undefer(event_id)  # nothing left to retry: it must not come due again
    if record is None:
        return SendOutcome(event_id, "missing", reason="no stored event (removed, or expired after delivery)")
    if record.state != "pending":
        status: SendStatus = "already_delivered" if record.state == "delivered" else "dead_lettered"
        return SendOutcome(event_id, status, attempt=record.attempts, reason=record.dead_reason)
    attempt = record.attempts + 1
    try:
        result = deliver_and_record(store, record, settings=settings, client=client, on_attempt=on_attempt)
    except ConfigurationError as exc:
        reason = f"not sent: {exc}"
        store.dead_letter(event_id, reason)
        return SendOutcome(event_id, "dead_lettered", record.attempts, reason=reason)
    except WebhookRejectedError as exc:
        store.dead_letter(event_id, str(exc))
        return SendOutcome(event_id, "dead_lettered", attempt, exc.status_code, reason=str(exc))
    except WebhookDeliveryError as exc:
        return _after_retryable_failure(store, event_id, attempt, exc, settings=settings, rng=rng)
    return SendOutcome(event_id, "delivered", attempt, result.status_code)


def _after_retryable_failure(
    store: EventStore,
    event_id: str,
    attempt: int,
    exc: WebhookDeliveryError,
    *,
    settings: Settings,
    rng: random.Random | None,
) -> SendOutcome:
    """Carry out the retry policy's decision on the store: dead letter, countdown, or schedule."""
    decision = webhook_retry(attempt, retry_after_s=exc.retry_after_s, settings=settings, rng=rng)
    if decision.action == "give_up":
        reason = f"gave up after {attempt} attempts: {exc}"
        store.dead_letter(event_id, reason)
        return SendOutcome(event_id, "dead_lettered", attempt, exc.status_code, reason=reason)
    if decision.action == "countdown":
        store.undefer(event_id)  # the Celery retry holds it now (and Redis redelivers it if a worker dies)
        return SendOutcome(event_id, "retry", attempt, exc.status_code, countdown_s=decision.delay_s, reason=str(exc))
    due_at = datetime.now(UTC) + timedelta(seconds=decision.delay_s)
    store.defer(event_id, due_at)
    logger.info("webhook %s attempt %s deferred to the durable schedule", event_id, attempt)
    return SendOutcome(event_id, "deferred", attempt, exc.status_code, due_at=due_at, reason=str(exc))


def _ignore_attempt(status_code: int | None) -> None:
    """The default ``on_attempt``: nobody counts."""
