"""Per-process clients of a worker: made after the pool forks, on first use, then reused.

Sharing them across a fork would share sockets and database connections between processes.
"""

from __future__ import annotations

import httpx
import redis

from hokusai_registry.redis_client import connect
from hokusai_registry.settings import get_settings
from worker.registration.registry import HokusaiModelRegistry
from worker.webhooks.store import EventStore

_registry: HokusaiModelRegistry | None = None
_redis: redis.Redis | None = None
_event_store: EventStore | None = None
_http_client: httpx.Client | None = None


def get_registry() -> HokusaiModelRegistry:
    """This worker process's registry (made after fork, on first use)."""
    global _registry
    if _registry is None:
        _registry = HokusaiModelRegistry(database_uri=get_settings().tracking_database_url)
    return _registry


def get_redis() -> redis.Redis:
    """This worker process's Redis client for locks and the failure stores."""
    global _redis
    if _redis is None:
        _redis = connect(get_settings().redis_url)
    return _redis


def get_http_client() -> httpx.Client:
    """This process's HTTP client: one connection pool and TLS context for every delivery.

    ``deliver`` sets the timeouts and refuses redirects on each request itself.
    """
    global _http_client
    if _http_client is None:
        _http_client = httpx.Client(follow_redirects=False)
    return _http_client


def get_event_store() -> EventStore:
    """This process's webhook event store (in the broker's Redis)."""
    global _event_store
    if _event_store is None:
        _event_store = EventStore.for_settings(get_settings(), get_redis())
    return _event_store
