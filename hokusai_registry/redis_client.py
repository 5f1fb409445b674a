"""The one way to build a Redis client, with one timeout policy, and one error translation.

Producers, workers and the CLI all connect through :func:`connect`; every failure to reach
Redis becomes :class:`~hokusai_registry.errors.BrokerUnavailableError` (retryable) and a
refused password :class:`~hokusai_registry.errors.ConfigurationError`, naming the server
without its credentials. :func:`redis_boundary` is the one translation: every store uses it,
as a ``with`` block or, around the methods of an object that keeps its client in ``self.client``,
as :func:`redis_method`. Imports only redis, the standard library and the error tree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import redis

from hokusai_registry.errors import BrokerUnavailableError, ConfigurationError
from hokusai_registry.redaction import redact_url, scrub

#: Seconds to wait for one TCP connect to Redis.
CONNECT_TIMEOUT_S = 3.0
#: Seconds to wait for one reply (blocking commands are not used on these clients).
SOCKET_TIMEOUT_S = 6.0

P = ParamSpec("P")
R = TypeVar("R")


class UsesRedis(Protocol):
    """An object that keeps its Redis client in ``client`` (a store)."""

    client: redis.Redis


S = TypeVar("S", bound=UsesRedis)


def connect(redis_url: str) -> redis.Redis:
    """A Redis client for ``redis_url`` with the product's timeouts (no connection is made yet)."""
    return redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30,
    )


def describe(client: redis.Redis) -> str:
    """Where ``client`` connects, for messages: host:port/db or the socket path, never a password."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


@contextmanager
def redis_boundary(where: str, action: str, *, redis_url: str | None = None) -> Iterator[None]:
    """Translate Redis failures into the error tree; ``where`` names the server (no password).

    Raises:
        ConfigurationError: Redis refused the credentials in ``REDIS_URL``.
        BrokerUnavailableError: Redis could not be reached or timed out.
    """
    try:
        yield
    except redis.exceptions.AuthenticationError as exc:
        raise ConfigurationError(f"Redis at {where} refused the credentials in REDIS_URL") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        message = scrub(str(exc), redis_url) if redis_url else str(exc)
        raise BrokerUnavailableError(f"Redis at {where} is unreachable while {action}: {message}") from exc


def redis_method(action: str) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Run a method inside :func:`redis_boundary`, naming the server of ``self.client`` and ``action``."""

    def decorate(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        @functools.wraps(method)
        def wrapper(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
            with redis_boundary(describe(self.client), action):
                return method(self, *args, **kwargs)

        return wrapper

    return decorate


__all__ = [
    "CONNECT_TIMEOUT_S",
    "SOCKET_TIMEOUT_S",
    "connect",
    "describe",
    "redact_url",
    "redis_boundary",
    "redis_method",
]
