"""One home for each cross-cutting rule: imports one way, Redis keys in ``hokusai_registry.keys``
(the deployed values, written where the stores write them), one cause-chain walk, metrics counted
by the task layer.

The static checks read every product module's imports and string constants with ``ast``; the
key checks write through the real stores into a real Redis and look at the keys that appear.
(No cycle anywhere is tests/test_import_cycles.py's check; this file pins the two that were.)
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from devtools import builders
from hokusai_registry import failed_jobs, keys, quarantine
from hokusai_registry.settings import get_settings
from worker.registration import attempts
from worker.webhooks.store import EventStore

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hokusai_registry", "producers", "worker", "hokusai_app")


def product_files() -> list[Path]:
    return sorted([*(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")), ROOT / "celeryconfig.py"])


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_of(path): path for path in product_files()}


def imports_of(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere (module level, functions, TYPE_CHECKING blocks)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from worker import scratch` imports the module worker.scratch
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {name for name in found if name in MODULES}


def test_the_app_and_the_tasks_and_settings_and_the_webhook_policy_import_one_way() -> None:
    assert "worker.tasks" not in imports_of(MODULES["worker.celery_app"])
    assert "worker.celery_app" in imports_of(MODULES["worker.tasks"])
    assert "hokusai_registry.settings" not in imports_of(MODULES["hokusai_registry.webhook_policy"])
    assert "hokusai_registry.webhook_settings" not in imports_of(MODULES["hokusai_registry.webhook_policy"])
    assert "hokusai_registry.webhook_policy" in imports_of(MODULES["hokusai_registry.webhook_settings"])
    assert "hokusai_registry.webhook_settings" in imports_of(MODULES["hokusai_registry.settings"])


def test_delivery_knows_nothing_of_the_metrics_nor_mlflow() -> None:
    """The task layer counts webhook attempts (delivery's ``on_attempt``); delivery stays light."""
    assert "worker.metrics" not in imports_of(MODULES["worker.webhooks.delivery"])
    assert "worker.metrics" in imports_of(MODULES["worker.tasks"])
    code = (
        "import sys\n"
        "import worker.webhooks.delivery, worker.webhooks.replay, worker.retry_policy\n"
        "print(sorted(m for m in sys.modules if m == 'worker.metrics' or m.split('.')[0] == 'mlflow'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def code_strings(path: Path) -> list[str]:
    """String constants of ``path`` that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("fragment", ["hokusai:", ":webhook:", ":by_time", ":enqueued:", ":lock:"])
def test_every_redis_key_is_spelled_in_the_keys_module_only(fragment: str) -> None:
    spelled = [
        f"{name}: {text!r}"
        for name, path in MODULES.items()
        if name != "hokusai_registry.keys"
        for text in code_strings(path)
        if fragment in text
    ]
    assert spelled == [], spelled


def test_the_cause_chain_is_walked_in_one_place() -> None:
    walkers = sorted(
        name
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr in {"__cause__", "__context__"}
    )
    assert set(walkers) == {"hokusai_registry.causes"}, walkers


def test_the_key_values_are_those_deployed_data_use() -> None:
    webhook = keys.WebhookKeys()
    assert {
        "failed": keys.FAILED_JOBS_KEY,
        "failed index": keys.FAILED_JOBS_INDEX_KEY,
        "quarantine": keys.QUARANTINE_KEY,
        "quarantine index": keys.QUARANTINE_INDEX_KEY,
        "enqueued": keys.enqueued_key("J"),
        "started": keys.job_started_key("J"),
        "lock": keys.job_lock_key("J"),
        "event": webhook.event("E"),
        "job event": webhook.job("J"),
        "dead letters": webhook.dead_letters,
        "deferred": webhook.deferred,
    } == {
        "failed": "hokusai:failed_jobs",
        "failed index": "hokusai:failed_jobs:by_time",
        "quarantine": "hokusai:quarantine",
        "quarantine index": "hokusai:quarantine:by_time",
        "enqueued": "hokusai:enqueued:J",
        "started": "hokusai:job:started:J",
        "lock": "hokusai:lock:job:J",
        "event": "hokusai:webhook:event:E",
        "job event": "hokusai:webhook:job:J",
        "dead letters": "hokusai:webhook:dead_letters",
        "deferred": "hokusai:webhook:deferred",
    }
    doc = keys.__doc__ or ""
    for key in ("hokusai:enqueued:<job_id>", "hokusai:job:started:<job_id>", "hokusai:lock:job:<job_id>",
                "hokusai:failed_jobs ", "hokusai:failed_jobs:by_time", "hokusai:quarantine ",
                "hokusai:quarantine:by_time", "<p>:webhook:event:<event_id>", "<p>:webhook:job:<job_id>",
                "<p>:webhook:dead_letters ", "<p>:webhook:dead_letters:by_time", "<p>:webhook:deferred"):  # fmt: skip
        assert key in doc, f"{key} is not listed in hokusai_registry.keys"


def test_the_stores_write_exactly_the_documented_keys(redis_url: str) -> None:
    """Through the real stores, into a real Redis: every key that appears is one keys.py names."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    job_id = str(uuid.uuid4())
    failed_jobs.record_failure(client, job_id, reason="bad", error_type="x.Error")
    record = quarantine.quarantine(client, b"\x00raw", queue="hokusai.registrations", reason="not JSON")
    assert attempts.begin_attempt(client, job_id, ttl_s=60)
    store = EventStore.for_settings(get_settings(), client)
    event = store.save_if_absent(builders.event("1", job_id=job_id, model_type="ranking", token_id="t"))
    store.defer(event.event_id, datetime.now(UTC) + timedelta(hours=1))
    store.dead_letter(event.event_id, "gave up")
    with client.lock(keys.job_lock_key(job_id), timeout=60):
        written = set(client.keys("*"))
    webhook = keys.WebhookKeys()
    assert written == {
        keys.FAILED_JOBS_KEY,
        keys.FAILED_JOBS_INDEX_KEY,
        keys.QUARANTINE_KEY,
        keys.QUARANTINE_INDEX_KEY,
        keys.job_started_key(job_id),
        keys.job_lock_key(job_id),
        webhook.event(event.event_id),
        webhook.job(job_id),
        webhook.dead_letters,
        keys.index_key(webhook.dead_letters),
    }  # the schedule's zset is gone: dead-lettering took the event off it
    assert client.hexists(keys.QUARANTINE_KEY, record.quarantine_id)
    client.close()


def test_the_worker_and_the_cli_build_the_event_store_with_one_factory(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULT_EXPIRES_S", "4321")
    get_settings.cache_clear()
    from worker import clients

    monkeypatch.setattr(clients, "_event_store", None)
    monkeypatch.setattr(clients, "_redis", None)
    worker_store = clients.get_event_store()
    cli_store = EventStore.for_settings(get_settings())
    assert worker_store.delivered_ttl_s == cli_store.delivered_ttl_s == 4321
    assert worker_store.client is clients.get_redis()  # the worker's process client, not a second pool
    assert worker_store.keys.dead_letters == cli_store.keys.dead_letters == "hokusai:webhook:dead_letters"
    get_settings.cache_clear()


def test_the_webhook_endpoint_keys_are_written_once_and_listed() -> None:
    webhook = keys.WebhookKeys()
    assert {
        "held": webhook.held("N"),
        "order": webhook.order("N", "M"),
        "endpoint": webhook.endpoint_state("N"),
        "disabled": webhook.disabled_endpoints,
    } == {
        "held": "hokusai:webhook:held:N",
        "order": "hokusai:webhook:order:N:M",
        "endpoint": "hokusai:webhook:endpoint:N",
        "disabled": "hokusai:webhook:disabled_endpoints",
    }
    doc = keys.__doc__ or ""
    for key in ("<p>:webhook:held:<endpoint>", "<p>:webhook:order:<endpoint>:<model>",
                "<p>:webhook:endpoint:<endpoint>", "<p>:webhook:disabled_endpoints"):  # fmt: skip
        assert key in doc, f"{key} is not listed in hokusai_registry.keys"
