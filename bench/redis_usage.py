"""What the benchmark's Redis holds: memory, keys and bytes by key prefix, keys without a TTL."""

from __future__ import annotations

from typing import Any


def redis_snapshot(client: Any) -> dict[str, Any]:
    """used_memory (whole instance), this database's bytes (MEMORY USAGE summed), keys by prefix, TTL-less keys.

    ``used_memory`` is INFO for the whole Redis instance, which other databases share; ``db_bytes``
    sums ``MEMORY USAGE`` over this database's keys only.
    """
    info = client.info("memory")
    by_prefix: dict[str, int] = {}
    bytes_by_prefix: dict[str, int] = {}
    no_ttl: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        prefix = key_prefix(key.decode(errors="replace"))
        by_prefix[prefix] = by_prefix.get(prefix, 0) + 1
        bytes_by_prefix[prefix] = bytes_by_prefix.get(prefix, 0) + int(client.memory_usage(key, samples=0) or 0)
        if client.ttl(key) == -1:
            no_ttl[prefix] = no_ttl.get(prefix, 0) + 1
    return {
        "used_memory": int(info["used_memory"]),
        "used_memory_human": info.get("used_memory_human"),
        "db_bytes": sum(bytes_by_prefix.values()),
        "keys": int(client.dbsize()),
        "keys_by_prefix": dict(sorted(by_prefix.items())),
        "bytes_by_prefix": dict(sorted(bytes_by_prefix.items())),
        "keys_without_ttl_by_prefix": dict(sorted(no_ttl.items())),
    }


def key_prefix(key: str) -> str:
    """``celery-task-meta-<id>`` → ``celery-task-meta-*``; ``hokusai:event:<id>`` → ``hokusai:event:*``."""
    if key.startswith("celery-task-meta-"):
        return "celery-task-meta-*"
    if key.startswith("_kombu.binding."):
        return key
    parts = key.split(":")
    return ":".join(parts[:-1]) + ":*" if len(parts) >= 2 else key
