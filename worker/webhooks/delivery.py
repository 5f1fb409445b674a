"""Delivering webhook events: one HTTP attempt, the URL/secret policy, and one recorded attempt.

* :func:`deliver` sends one attempt and classifies the answer: 2xx is success; network errors,
  timeouts, 408, 429 and 5xx raise ``WebhookDeliveryError`` (retryable, with the server's
  ``Retry-After``); 3xx (redirects are never followed) and other 4xx raise
  ``WebhookRejectedError``, and 410 its subclass ``WebhookEndpointGoneError``.
* the URL/secret rules (``check_webhook_config`` ...) live in ``hokusai_registry.webhook_policy``
  (re-exported here); every attempt checks the URL again.
* :func:`send_stored_event` is what the webhook tasks call: it attempts one stored delivery (an
  event to one endpoint), records the attempt, and says what happens next (done, retry after a
  countdown, deferred to the durable schedule, or dead-lettered), as the retry policy
  (``worker.retry_policy``) decides. Before sending it *holds* a delivery whose endpoint is
  disabled, and *waits* (durably, no attempt counted) while an earlier version of the same model
  is still undelivered to that endpoint (per-model order). An endpoint that answers 410, or has
  failed for ``WEBHOOK_DISABLE_AFTER_S`` without a success, is disabled and the delivery held
  (``worker.webhooks.endpoints``).
  The caller may pass ``on_attempt``, called with the HTTP status (None: no answer) of every
  attempt made: the task layer counts its metrics so, and this module knows nothing of them.

This module never logs secrets or URLs: its lines carry the event id, the status and the attempt.
(httpx's own request log line passes through ``hokusai_registry.log.RedactUrlFilter``.)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
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
from hokusai_registry.webhook_policy import (
    DEFAULT_ENDPOINT,
    Endpoint,
    check_webhook_config,
    check_webhook_url,
    configured_endpoints,
    webhook_secret,
)
from worker import spans
from worker.retry_policy import parse_retry_after, webhook_retry
from worker.webhooks.delivery_records import EventRecord
from worker.webhooks.endpoints import EndpointStates
from worker.webhooks.event import WebhookEvent
from worker.webhooks.signing import signature_headers
from worker.webhooks.store import EventStore

logger = logging.getLogger(__name__)

__all__ = ["check_webhook_config", "check_webhook_url", "deliver", "send_stored_event", "webhook_secret"]

RETRYABLE_STATUSES = frozenset({408, 429})
SendStatus = Literal[
    "delivered", "already_delivered", "retry", "deferred", "dead_lettered", "missing", "held", "waiting"
]
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

    ``retry``: call the task again after ``countdown_s``. ``deferred`` and ``waiting`` (behind an
    earlier version of its model): nothing to do now; the delivery sits in the durable schedule
    until ``due_at``. ``held``: its endpoint is disabled; enabling it sends it. Every other status
    is final. ``event_id`` is the delivery id (the event id for the ``default`` endpoint).
    """

    event_id: str
    status: SendStatus
    attempt: int = 0
    status_code: int | None = None
    countdown_s: float | None = None
    due_at: datetime | None = None
    reason: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    #: Settling this one made the next version of its model to this endpoint due now: pump the
    #: schedule at once (``worker.webhooks.pump``) rather than at its next poll.
    woke_next: bool = False

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
    secret: str | Sequence[str] | None,
    client: httpx.Client | None = None,
    settings: Settings,
    attempt: int = 1,
    traceparent: str | None = None,
) -> DeliveryResult:
    """POST ``event.body`` once to ``url``, signed, with the event's idempotency key.

    ``client`` may be shared between calls; timeouts and ``follow_redirects=False`` are applied
    per request either way. ``secret`` may be several (primary first): each signs
    ``webhook-signature``. ``traceparent`` is sent as its header. ``attempt`` is only for the log.

    Raises:
        WebhookDeliveryError: network error, timeout, 408, 429 or 5xx (``retry_after_s`` set
            when the server sent ``Retry-After``).
        WebhookEndpointGoneError: 410.
        WebhookRejectedError: 3xx or another 4xx.
        ConfigurationError: the URL or the secret breaks the policy.
    """
    check_webhook_url(url, settings)
    headers = signature_headers(
        event.body,
        event.event_id,
        secret,
        int(time.time()),
        allow_unsigned=settings.webhook_allow_unsigned,
        traceparent=traceparent,
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
        raise WebhookEndpointGoneError(
            "endpoint gone: answered 410; the endpoint is disabled, its events kept: fix its URL, then "
            "`hokusai-registry webhooks endpoints enable`",
            status_code=code,
        )
    hint = " (redirects are not followed)" if 300 <= code < 400 else ""
    raise WebhookRejectedError(f"endpoint rejected the event: answered {code}{hint}", status_code=code)


# ---------------------------------------------------------------------- a recorded attempt
def endpoint_of(record: EventRecord, settings: Settings) -> Endpoint:
    """The configured endpoint a stored delivery goes to.

    Raises:
        ConfigurationError: no endpoint is configured under its name (``WEBHOOK_URL`` unset, for
            the ``default`` endpoint), or the endpoints file is malformed.
    """
    endpoints = configured_endpoints(settings)
    found = next((endpoint for endpoint in endpoints if endpoint.name == record.endpoint), None)
    if found is not None:
        return found
    if not endpoints:
        raise ConfigurationError("WEBHOOK_URL is not set: there is nowhere to send webhook events")
    raise ConfigurationError(f"no webhook endpoint {record.endpoint!r} is configured (WEBHOOK_ENDPOINTS_FILE)")


def deliver_and_record(
    store: EventStore,
    record: EventRecord,
    *,
    settings: Settings,
    client: httpx.Client | None = None,
    on_attempt: AttemptObserver | None = None,
    endpoint: Endpoint | None = None,
) -> DeliveryResult:
    """Attempt a stored delivery at its endpoint, signed with its active secrets (read now, so a
    replay after a rotation signs with the current ones); record the attempt; mark it delivered on 2xx.

    The attempt goes into the delivery's history with its start time (UTC), its HTTP status or
    error, and its duration, and ``on_attempt`` hears of it; the endpoint's failure window
    (``EndpointStates``) closes on success. Shared by :func:`send_stored_event` and
    ``worker.webhooks.replay``. Raises what :func:`deliver` raises, after recording the failed attempt.
    """
    observe = on_attempt or _ignore_attempt
    target = endpoint or endpoint_of(record, settings)
    event, ident = record.event, record.delivery_id
    started_at, started = datetime.now(UTC), time.monotonic()
    try:
        result = deliver(
            event,
            url=target.url,
            secret=target.active_secrets(started_at),
            client=client,
            settings=settings,
            attempt=record.attempts + 1,
            traceparent=spans.outgoing_traceparent(record.traceparent),
        )
    except (WebhookDeliveryError, WebhookRejectedError) as exc:
        observe(exc.status_code)
        store.record_attempt(
            ident,
            status_code=exc.status_code,
            error=str(exc),
            at=started_at,
            duration_s=round(time.monotonic() - started, 4),
        )
        raise
    observe(result.status_code)
    store.record_attempt(ident, status_code=result.status_code, at=started_at, duration_s=round(result.elapsed_s, 4))
    store.mark_delivered(ident)
    EndpointStates.of(store).record_success(target.name)
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
    """One attempt of a stored, pending delivery (``event_id``: its delivery id), and the decision after it.

    Retryable failures retry along ``WEBHOOK_RETRY_SCHEDULE`` (:func:`worker.retry_policy.webhook_retry`,
    never before the server's ``Retry-After``): as a countdown when it is at most
    ``WEBHOOK_BACKOFF_MAX_S`` (which settings keep below the visibility timeout), else through the
    durable schedule (``store.defer``). After the schedule's last retry, on a permanent rejection,
    or when the ``WEBHOOK_*`` settings cannot send it (nothing is sent then), the delivery is
    dead-lettered, so an operator can replay it once the cause is fixed. A 410, or failing for
    ``WEBHOOK_DISABLE_AFTER_S`` without a success, disables the endpoint and holds the delivery.
    Deliveries already delivered or dead-lettered are not sent again (replay those).

    Raises:
        BrokerUnavailableError: Redis is unreachable.
    """
    record = store.get(event_id)
    if record is None or record.state != "pending":
        store.undefer(event_id)  # nothing left to retry: it must not come due again
    if record is None:
        return SendOutcome(event_id, "missing", reason="no stored event (removed, or expired after delivery)")
    name = record.endpoint
    if record.state != "pending":
        status: SendStatus = "already_delivered" if record.state == "delivered" else "dead_lettered"
        return SendOutcome(event_id, status, attempt=record.attempts, reason=record.dead_reason, endpoint=name)
    attempt = record.attempts + 1
    states = EndpointStates.of(store)
    try:
        endpoint = endpoint_of(record, settings)
    except ConfigurationError as exc:
        return _dead(store, record, f"not sent: {exc}", attempts=record.attempts)
    if not states.is_enabled(endpoint):
        store.hold(event_id)
        return SendOutcome(event_id, "held", record.attempts, reason=f"endpoint {name} is disabled", endpoint=name)
    earlier = store.earlier_pending(record)
    if earlier is not None:
        return _wait_behind(store, record, earlier, settings=settings)
    try:
        result = deliver_and_record(
            store, record, settings=settings, client=client, on_attempt=on_attempt, endpoint=endpoint
        )
    except ConfigurationError as exc:
        return _dead(store, record, f"not sent: {exc}", attempts=record.attempts)
    except WebhookEndpointGoneError as exc:
        states.disable(name, f"answered 410 Gone (delivery {event_id})")
        store.hold(event_id)
        return SendOutcome(event_id, "held", attempt, exc.status_code, reason=str(exc), endpoint=name)
    except WebhookRejectedError as exc:
        states.record_failure(name)
        return _dead(store, record, str(exc), attempts=attempt, status_code=exc.status_code)
    except WebhookDeliveryError as exc:
        failing_since = states.record_failure(name)
        if datetime.now(UTC) - failing_since >= timedelta(seconds=settings.webhook_disable_after_s):
            states.disable(name, f"failed since {failing_since.isoformat()} without a success")
            store.hold(event_id)
            return SendOutcome(event_id, "held", attempt, exc.status_code, reason=str(exc), endpoint=name)
        return _after_retryable_failure(store, record, attempt, exc, settings=settings, rng=rng)
    woke = _wake_next(store, record)
    return SendOutcome(event_id, "delivered", attempt, result.status_code, endpoint=name, woke_next=woke)


def _dead(
    store: EventStore, record: EventRecord, reason: str, *, attempts: int, status_code: int | None = None
) -> SendOutcome:
    store.dead_letter(record.delivery_id, reason)
    woke = _wake_next(store, record)  # a dead letter no longer holds back its model's later versions
    return SendOutcome(record.delivery_id, "dead_lettered", attempts, status_code, reason=reason,
                       endpoint=record.endpoint, woke_next=woke)  # fmt: skip


def _wait_behind(store: EventStore, record: EventRecord, earlier: EventRecord, *, settings: Settings) -> SendOutcome:
    """Per-model order: wait in the durable schedule until the earlier version is due, or a poll
    interval (it wakes this one when it settles sooner, :func:`_wake_next`). No attempt is counted."""
    now = datetime.now(UTC)
    due_at = max(earlier.deferred_until or now, now) + timedelta(seconds=settings.webhook_schedule_poll_s)
    store.defer(record.delivery_id, due_at)
    reason = f"waits for version {earlier.event.version} of {record.event.model_name} (per-model order)"
    logger.info("webhook %s %s", record.delivery_id, reason)
    return SendOutcome(
        record.delivery_id, "waiting", record.attempts, due_at=due_at, reason=reason, endpoint=record.endpoint
    )


def _wake_next(store: EventStore, record: EventRecord) -> bool:
    """The next version of the model to this endpoint, if it waits in the schedule, is due now (True)."""
    following = store.next_in_order(record)
    return following is not None and store.wake(following)


def _after_retryable_failure(
    store: EventStore,
    record: EventRecord,
    attempt: int,
    exc: WebhookDeliveryError,
    *,
    settings: Settings,
    rng: random.Random | None,
) -> SendOutcome:
    """Carry out the retry policy's decision on the store: dead letter, countdown, or schedule."""
    event_id, name = record.delivery_id, record.endpoint
    decision = webhook_retry(attempt, retry_after_s=exc.retry_after_s, settings=settings, rng=rng)
    if decision.action == "give_up":
        return _dead(
            store, record, f"gave up after {attempt} attempts: {exc}", attempts=attempt, status_code=exc.status_code
        )
    if decision.action == "countdown":
        store.undefer(event_id)  # the Celery retry holds it now (and Redis redelivers it if a worker dies)
        return SendOutcome(
            event_id, "retry", attempt, exc.status_code, countdown_s=decision.delay_s, reason=str(exc), endpoint=name
        )
    due_at = datetime.now(UTC) + timedelta(seconds=decision.delay_s)
    store.defer(event_id, due_at)
    logger.info("webhook %s attempt %s deferred to the durable schedule", event_id, attempt)
    return SendOutcome(event_id, "deferred", attempt, exc.status_code, due_at=due_at, reason=str(exc), endpoint=name)


def _ignore_attempt(status_code: int | None) -> None:
    """The default ``on_attempt``: nobody counts."""
