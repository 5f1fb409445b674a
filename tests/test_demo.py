"""The demo as the README runs it (`./scripts/demo.sh`), against the machine's Redis: it keeps to its
own database and leaves nothing behind, in Redis or as processes.

(The demo on a Redis of its own, and outside a checkout, are tested in tests/test_operations.py.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from hokusai_app.demo import DEMO_REDIS_DB
from tests.support import TEST_REDIS_DB, require_service
from tests.worker_process import ROOT

pytestmark = pytest.mark.slow


def keys_of(database: int) -> set[bytes]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=database)
    try:
        return set(client.scan_iter(count=1000))
    finally:
        client.close()


def test_demo_script_keeps_to_its_own_redis_database_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    assert DEMO_REDIS_DB not in {0, 14, TEST_REDIS_DB}, "the demo's database must be its own"
    default_before, demo_before = keys_of(0), keys_of(DEMO_REDIS_DB)
    home = tmp_path / "demo-home"
    env = {**os.environ, "HOKUSAI_HOME": str(home)}  # REDIS_URL unset, as in the README (conftest drops it)

    done = subprocess.run(["./scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)

    assert done.returncode == 0, done.stderr[-3000:]
    assert f"==> Redis at redis://127.0.0.1:6379/{DEMO_REDIS_DB};" in done.stderr
    assert "Webhook received" in done.stdout
    assert keys_of(0) - default_before == set(), "the demo wrote to Redis database 0"
    assert keys_of(DEMO_REDIS_DB) == demo_before, "the demo left keys in its Redis database"
    leftovers = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True)
    assert leftovers.stdout == "", "the demo stops what it started"
    assert not any((home / "staging").iterdir()), "the demo's staged model folder is left behind"
