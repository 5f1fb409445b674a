"""One store design for everything kept for an operator: failed jobs, dead letters, quarantine.

Each store is a pydantic model kept in Redis under one name ``<n>`` (the names are in
``hokusai_registry.keys``)::

    <n>            hash  record id -> the record as JSON
    <n>:by_time    zset  record id -> its time (Unix seconds, UTC), for listing in order

Both keys are written in one MULTI/EXEC, so a record is in both or neither. Times are
timezone-aware UTC; ``--since`` values are parsed by :func:`parse_since` everywhere. A store
holds at most ``max_records``: writing one more drops the oldest (so a flood of poison cannot
fill Redis). Redis failures become ``BrokerUnavailableError`` (``redis_client.redis_boundary``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Generic, TypeVar

import redis
from pydantic import BaseModel, ValidationError

from hokusai_registry.errors import InvalidInputError
from hokusai_registry.keys import index_key
from hokusai_registry.redis_client import describe, redis_boundary

logger = logging.getLogger(__name__)

#: The most records one store keeps; the oldest are dropped beyond it.
DEFAULT_MAX_RECORDS = 10_000

M = TypeVar("M", bound=BaseModel)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_since(text: str) -> datetime:
    """The one ``--since`` parser: ISO-8601 with a zone, or naive meaning UTC (``Z`` accepted).

    Raises:
        InvalidInputError: not an ISO-8601 date or date-time.
    """
    try:
        return utc(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise InvalidInputError(
            f"expected an ISO-8601 date/time such as 2026-11-27T09:23:14Z (naive = UTC), got {text!r}"
        ) from exc


class RecordStore(Generic[M]):
    """Records of one pydantic ``model`` keyed by its ``id_field``, ordered by its ``time_field``."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        model: type[M],
        *,
        id_field: str,
        time_field: str,
        label: str | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.client = client
        self.label = label or name
        self.key = name
        self.index_key = index_key(name)
        self.model = model
        self.id_field = id_field
        self.time_field = time_field
        self.max_records = max_records

    def _boundary(self, action: str):  # type: ignore[no-untyped-def]
        return redis_boundary(describe(self.client), action)

    def put(self, record: M) -> M:
        """Store (or replace) ``record``; drop the oldest beyond ``max_records``."""
        with self._boundary(f"storing {self.label} record {getattr(record, self.id_field)}"):
            pipe = self.client.pipeline(transaction=True)
            self.put_in(pipe, record)
            pipe.execute()
            self.trim()
        return record

    def put_in(self, pipe: redis.client.Pipeline, record: M) -> None:
        """Queue the writes of :meth:`put` on ``pipe`` (to commit them with other writes; then :meth:`trim`)."""
        record_id = str(getattr(record, self.id_field))
        pipe.hset(self.key, record_id, record.model_dump_json())
        pipe.zadd(self.index_key, {record_id: utc(getattr(record, self.time_field)).timestamp()})

    def remove_in(self, pipe: redis.client.Pipeline, record_id: str) -> None:
        """Queue the deletes of :meth:`remove` on ``pipe``."""
        pipe.hdel(self.key, str(record_id))
        pipe.zrem(self.index_key, str(record_id))

    def trim(self) -> None:
        """Drop the oldest records beyond ``max_records``."""
        excess = int(self.client.zcard(self.index_key)) - self.max_records
        if excess <= 0:
            return
        oldest = self.client.zrange(self.index_key, 0, excess - 1)
        if oldest:
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.key, *oldest)
            pipe.zrem(self.index_key, *oldest)
            pipe.execute()
            logger.warning("%s holds more than %d records: dropped the %d oldest", self.key, self.max_records, excess)

    def get(self, record_id: str) -> M | None:
        """The record ``record_id``, or None."""
        with self._boundary(f"reading {self.label} record {record_id}"):
            text = self.client.hget(self.key, str(record_id))
        return None if text is None else self._parse(str(record_id), text)

    def list(self, since: datetime | None = None) -> list[M]:
        """Records oldest first; with ``since`` (naive = UTC), only those at or after it."""
        low: float | str = "-inf" if since is None else utc(since).timestamp()
        with self._boundary(f"listing {self.label}"):
            ids = self.client.zrangebyscore(self.index_key, low, "+inf")
            raw = self.client.hmget(self.key, ids) if ids else []
        records = []
        for record_id, text in zip(ids, raw, strict=True):
            if text is None:  # removed between the two reads
                continue
            record = self._parse(record_id, text)
            if record is not None:
                records.append(record)
        return records

    def remove(self, record_id: str) -> bool:
        """Delete ``record_id``; True if there was one."""
        with self._boundary(f"removing {self.label} record {record_id}"):
            pipe = self.client.pipeline(transaction=True)
            self.remove_in(pipe, record_id)
            removed, _ = pipe.execute()
        return bool(removed)

    def _parse(self, record_id: bytes | str, text: bytes | str) -> M | None:
        try:
            return self.model.model_validate_json(text)
        except ValidationError as exc:
            name = record_id.decode() if isinstance(record_id, bytes) else record_id
            logger.warning("skipping unreadable record %s in %s: %s", name, self.key, exc)
            return None
