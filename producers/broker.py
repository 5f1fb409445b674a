"""The producer's view of Redis: minimal JSON-only Celery apps and one bounded retry layer.

Two apps per Redis URL: one that only publishes (no result backend, so enqueueing never opens
a result subscription) and one that only reads results. Both refuse pickle. Celery's and
kombu's own publish/connect retries are switched off so that tenacity, bounded by
``ENQUEUE_RETRY_S``, is the single retry layer around each call (see docs/style: one retry
layer per call).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import kombu.exceptions
import redis
import redis.exceptions
from celery import Celery, signals
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential_jitter

from hokusai_registry.causes import any_cause
from hokusai_registry.contract import CELERY_WIRE_SETTINGS, stamp_enqueued_at
from hokusai_registry.errors import BrokerUnavailableError, ConfigurationError
from hokusai_registry.redaction import redact_url, scrub
from hokusai_registry.redis_client import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, connect

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Every message carries its publish time, so the worker's metrics can tell how long the oldest waited.
signals.before_task_publish.connect(stamp_enqueued_at, weak=False)

# Connect and reply timeouts are core's one Redis policy (redis_client); the retry budget is
# ENQUEUE_RETRY_S on top.
_JSON_ONLY: dict[str, Any] = {
    **CELERY_WIRE_SETTINGS,  # JSON only, as the worker
    "task_send_sent_event": True,  # Flower sees the task as SENT
    "task_publish_retry": False,  # tenacity is the one retry layer
    "broker_connection_timeout": CONNECT_TIMEOUT_S,
    "broker_transport_options": {
        "max_retries": 0,  # no hidden kombu reconnect loop
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
    },
    "result_backend_transport_options": {"retry_policy": {"max_retries": 0}},
    "redis_socket_connect_timeout": CONNECT_TIMEOUT_S,
    "redis_socket_timeout": SOCKET_TIMEOUT_S,
}


@lru_cache(maxsize=8)
def publisher_app(redis_url: str) -> Celery:
    """A Celery app that publishes to ``redis_url`` by task name and stores no results."""
    app = Celery("hokusai-producer", broker=redis_url, set_as_current=False)
    app.conf.update(_JSON_ONLY)
    return app


@lru_cache(maxsize=8)
def producer_redis(redis_url: str) -> redis.Redis:
    """This process's Redis client for the producer's own keys, reused across jobs.

    One connection pool per URL, like :func:`publisher_app`: a new client per job paid a TCP
    connect and redis-py's hello (which looks up package versions) every time (~3 ms). redis-py
    resets a pool used across a fork.
    """
    return connect(redis_url)


@lru_cache(maxsize=8)
def results_app(redis_url: str) -> Celery:
    """A Celery app that reads task states and results from the Redis backend at ``redis_url``."""
    app = Celery("hokusai-results", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(_JSON_ONLY)
    return app


#: Connection-level failures worth retrying, anywhere in the cause chain (kombu wraps redis-py's).
_TRANSIENT = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


def is_transient(exc: BaseException) -> bool:
    """True for connection-level failures worth retrying (not for a wrong password), by the cause chain."""
    if any_cause(exc, redis.exceptions.AuthenticationError):
        return False
    return any_cause(exc, _TRANSIENT)


def _log_retry(state: RetryCallState, redis_url: str, action: str) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "Redis at %s unreachable while %s (attempt %d: %s); retrying in %.2fs",
        redact_url(redis_url),
        action,
        state.attempt_number,
        scrub(str(exc), redis_url),
        delay,
    )


def call_with_retry(fn: Callable[[], T], *, redis_url: str, retry_s: float, action: str) -> T:
    """Run ``fn``; retry transient Redis failures for about ``retry_s`` seconds, then give up.

    Raises:
        BrokerUnavailableError: Redis stayed unreachable; the message names the URL (no password).
        ConfigurationError: Redis refused the credentials in ``REDIS_URL``.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_before_delay(retry_s),
        wait=wait_exponential_jitter(initial=0.1, max=2.0, jitter=0.1),
        reraise=True,
        before_sleep=lambda state: _log_retry(state, redis_url, action),
    )
    try:
        return retrying(fn)
    except Exception as exc:
        if any_cause(exc, redis.exceptions.AuthenticationError):
            raise ConfigurationError(f"Redis at {redact_url(redis_url)} refused the credentials in REDIS_URL") from exc
        if is_transient(exc):
            raise BrokerUnavailableError(
                f"Redis at {redact_url(redis_url)} is unreachable while {action} "
                f"(gave up after retrying for {retry_s:g}s, ENQUEUE_RETRY_S): "
                f"{type(exc).__name__}: {scrub(str(exc), redis_url)}"
            ) from exc
        raise
