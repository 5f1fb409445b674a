"""Webhook endpoints at run time: disabled or not, failing since when, and secret rotation in the file.

The configured endpoints (name, URL, secrets, event types, ``enabled``) are
``hokusai_registry.webhook_policy``'s. This module keeps what happens to them in Redis
(``hokusai_registry.keys.WebhookKeys``: ``endpoint_state``, ``disabled_endpoints``):

* an endpoint is **disabled** by an operator (``webhooks endpoints disable``), when it answers
  ``410 Gone``, or when it has failed for ``WEBHOOK_DISABLE_AFTER_S`` without one success. Its
  deliveries are then held, never dropped (``EventStore.hold``); :func:`enable` releases them,
  oldest first.
* :func:`rotate_secret` adds a new primary secret to an endpoint of ``WEBHOOK_ENDPOINTS_FILE`` and
  keeps the old ones signing until an expiry (default 24 h); expired ones are dropped from the file.

No secret is ever written to Redis or a log here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from hokusai_registry.errors import ConfigurationError, InvalidInputError
from hokusai_registry.keys import PREFIX, WebhookKeys
from hokusai_registry.redis_client import redis_method
from hokusai_registry.webhook_policy import (
    DEFAULT_ROTATION_OVERLAP_S,
    Endpoint,
    new_secret,
    read_endpoints_file,
)
from worker.webhooks.store import EventStore

logger = logging.getLogger(__name__)

_using_redis = redis_method("using the webhook endpoint state")


@dataclass(frozen=True)
class EndpointState:
    """What Redis knows of one endpoint (all times UTC)."""

    name: str
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    last_success_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "disabled_at": _iso_or_none(self.disabled_at),
            "disabled_reason": self.disabled_reason,
            "failing_since": _iso_or_none(self.failing_since),
            "last_success_at": _iso_or_none(self.last_success_at),
        }


class EndpointStates:
    """The run-time state of every endpoint, in the event store's Redis database."""

    def __init__(self, client: redis.Redis, *, prefix: str = PREFIX) -> None:
        self.client = client
        self.keys = WebhookKeys(prefix)

    @classmethod
    def of(cls, store: EventStore) -> EndpointStates:
        """The states beside ``store`` (same client, same prefix)."""
        return cls(store.client, prefix=store.prefix)

    @_using_redis
    def get(self, name: str) -> EndpointState:
        """The state of endpoint ``name`` (all empty when nothing happened to it)."""
        fields = {_text(k): _text(v) for k, v in self.client.hgetall(self.keys.endpoint_state(name)).items()}
        return EndpointState(
            name,
            _parse(fields.get("disabled_at")),
            fields.get("disabled_reason") or None,
            _parse(fields.get("failing_since")),
            _parse(fields.get("last_success_at")),
        )

    def is_enabled(self, endpoint: Endpoint) -> bool:
        """Enabled in the configuration and not disabled at run time."""
        return endpoint.enabled and self.get(endpoint.name).disabled_at is None

    @_using_redis
    def disabled_names(self) -> list[str]:
        """Endpoints disabled at run time, the earliest first (the metrics read it)."""
        return [_text(item) for item in self.client.zrange(self.keys.disabled_endpoints, 0, -1)]

    @_using_redis
    def disable(self, name: str, reason: str, *, at: datetime | None = None) -> None:
        """Disable ``name`` (its deliveries are held from now on), with ``reason``."""
        moment = at or datetime.now(UTC)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self.keys.endpoint_state(name), mapping={"disabled_at": moment.isoformat(), "disabled_reason": reason}
        )
        pipe.zadd(self.keys.disabled_endpoints, {name: moment.timestamp()}, nx=True)
        pipe.execute()
        logger.warning("webhook endpoint %s disabled: %s", name, reason)

    @_using_redis
    def clear_disabled(self, name: str) -> None:
        """Enable ``name`` again and restart its failure window (see :func:`enable`)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.endpoint_state(name), "disabled_at", "disabled_reason", "failing_since")
        pipe.zrem(self.keys.disabled_endpoints, name)
        pipe.execute()

    @_using_redis
    def record_success(self, name: str, *, at: datetime | None = None) -> None:
        """An attempt to ``name`` succeeded: its failure window closes."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.endpoint_state(name), "last_success_at", (at or datetime.now(UTC)).isoformat())
        pipe.hdel(self.keys.endpoint_state(name), "failing_since")
        pipe.execute()

    @_using_redis
    def record_failure(self, name: str, *, at: datetime | None = None) -> datetime:
        """An attempt to ``name`` failed; returns since when it has failed without a success."""
        key = self.keys.endpoint_state(name)
        self.client.hsetnx(key, "failing_since", (at or datetime.now(UTC)).isoformat())
        since = _parse(_text(self.client.hget(key, "failing_since") or ""))
        return since or (at or datetime.now(UTC))


def enable(store: EventStore, name: str) -> int:
    """Enable endpoint ``name`` at run time and release its held deliveries, oldest first; how many."""
    EndpointStates.of(store).clear_disabled(name)
    released = store.release_held(name)
    logger.info("webhook endpoint %s enabled; %d held deliveries released", name, released)
    return released


# ---------------------------------------------------------------------- rotation in the file
def rotate_secret(
    path: Path, name: str, *, keep_old_s: float = DEFAULT_ROTATION_OVERLAP_S, now: datetime | None = None
) -> str:
    """Give endpoint ``name`` of the endpoints file at ``path`` a new primary secret; return it.

    The old secrets without an expiry get ``expires_at`` = now + ``keep_old_s`` and keep signing
    until then; expired entries leave the file. The file is replaced atomically, mode 0600, as
    JSON or YAML like it was.

    Raises:
        ConfigurationError: the file is unreadable or malformed.
        InvalidInputError: no endpoint ``name`` in it.
    """
    moment = now or datetime.now(UTC)
    document = read_endpoints_file(path)
    entry = next((item for item in document["endpoints"] if isinstance(item, dict) and item.get("name") == name), None)
    if entry is None:
        raise InvalidInputError(f"no endpoint {name!r} in {path}")
    expiry = (moment + timedelta(seconds=keep_old_s)).isoformat()
    kept = []
    for item in entry.get("secrets") or []:
        expires = item.get("expires_at")
        if expires is not None and _parse(str(expires).replace("Z", "+00:00")) <= moment:  # type: ignore[operator]
            continue
        kept.append({**item, "expires_at": expires if expires is not None else expiry})
    secret = new_secret()
    entry["secrets"] = [{"secret": secret}, *kept]
    _write_atomically(path, document)
    logger.info("endpoint %s: new primary secret; %d old one(s) sign until their expiry", name, len(kept))
    return secret


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml  # optional: only a YAML endpoints file needs it

        text = yaml.safe_dump(document, sort_keys=False)
    else:
        text = json.dumps(document, indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigurationError(f"cannot rewrite {path}: {exc.strerror or exc}") from exc


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _iso_or_none(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
