"""Poison messages on either queue: a real worker quarantines each, keeps running, then registers a good job."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from devtools.receiver import WebhookReceiver
from hokusai_app.cli import main
from hokusai_registry import quarantine
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, WEBHOOK_QUEUE, WEBHOOK_TASK, webhook_task_id
from producers import enqueue_registration
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import WorkerProcess, wait_until
from worker.queues import queue_keys

pytestmark = pytest.mark.slow

ON_A_PRIORITY_STEP = b"\x81 raw bytes on a priority step's list"


def envelope(task: str, args: list[Any], queue: str, *, content_type: str = "application/json",
             body: str | None = None, **headers: Any) -> bytes:  # fmt: skip
    """A Celery protocol-2 message as kombu's Redis transport stores it."""
    task_id = str(uuid.uuid4())
    raw_body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps(
        {
            "body": body if body is not None else base64.b64encode(raw_body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0, **headers},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def poison(queue: str) -> list[tuple[bytes, str]]:
    """(raw item, a word the quarantine reason must contain) for every kind of poison."""
    pickled = envelope(REGISTER_TASK, [{}], queue, content_type="application/x-python-serialize",
                       body=base64.b64encode(pickle.dumps(([{}], {}, {}))).decode())  # fmt: skip
    return [
        (b"\x80\x81\xfe raw bytes, not JSON", "not JSON"),
        (b'{"hello": "world"}', "not a message envelope"),
        (b"[1, 2, 3]", "not a message envelope"),
        (envelope(REGISTER_TASK, [{}], queue, body="%%% not base64 %%%"), "undecodable body"),
        (pickled, "content type"),
        (envelope("hokusai.no_such_task", [{}], queue), "unknown task"),
        (envelope(REGISTER_TASK, [], queue), "wrong arguments"),
        (envelope(WEBHOOK_TASK, [{}, "extra", "args"], queue), "wrong arguments"),
        (envelope(REGISTER_TASK, [{}], queue, timelimit="x"), "invalid headers"),
        (envelope(REGISTER_TASK, [{}], queue, eta="not a date"), "invalid headers"),
        (envelope(REGISTER_TASK, [{}], queue, expires={"a": 1}), "invalid headers"),
        (envelope(REGISTER_TASK, [{}], queue, retries="many"), "invalid headers"),
    ]


def test_poison_on_both_queues_is_quarantined_and_the_same_worker_goes_on(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    items = [(queue, raw, word) for queue in (REGISTRATION_QUEUE, WEBHOOK_QUEUE) for raw, word in poison(queue)]
    receiver = WebhookReceiver(SECRET).start()
    env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
    with WorkerProcess(env, tmp_path) as worker:
        assert worker.process is not None
        pid = worker.process.pid
        for queue, raw, _ in items:
            client.lpush(queue, raw)
        client.lpush(queue_keys(REGISTRATION_QUEUE)[-1], ON_A_PRIORITY_STEP)  # kombu's list for priority 9
        store = quarantine.store(client)
        wait_until(lambda: len(store.list()) > len(items), timeout_s=30, what="every poison message quarantined")

        job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
        result = wait_result(client_app(redis_url), job_id)
        assert result.state == "SUCCESS", worker.log_tail()
        webhook = wait_result(client_app(redis_url), webhook_task_id(job_id))  # the other queue goes on too
        assert webhook.state == "SUCCESS", worker.log_tail()
        assert [event["model"]["version"] for event in receiver.wait_for(1)] == ["1"]
        assert worker.process.pid == pid and worker.process.poll() is None, worker.log_tail()
        log = worker.log_text()
    receiver.stop()

    assert "Unrecoverable error" not in log
    records = store.list()
    assert len(records) == len(items) + 1  # each once: nothing retried in a loop
    assert not any(client.llen(key) for queue in (REGISTRATION_QUEUE, WEBHOOK_QUEUE) for key in queue_keys(queue))
    kept = {(record.queue, record.raw): record for record in records}
    assert "not JSON" in kept[(REGISTRATION_QUEUE, ON_A_PRIORITY_STEP)].reason
    for queue, raw, word in items:
        record = kept[(queue, raw)]
        assert word in record.reason, (record.reason, word)
        assert record.received_at.tzinfo is not None

    runner = CliRunner()
    listed = runner.invoke(main, ["jobs", "quarantined"])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)) == len(items) + 1
    first = records[0]
    shown = runner.invoke(main, ["jobs", "show-quarantined", first.quarantine_id])
    assert shown.exit_code == 0, shown.output
    assert base64.b64decode(json.loads(shown.stdout)["raw_b64"]) == first.raw
    missing = runner.invoke(main, ["jobs", "show-quarantined", "nope"])
    assert missing.exit_code != 0 and "no quarantined message" in missing.output


def test_raw_bytes_are_capped(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    big = b"x" * (quarantine.MAX_RAW_BYTES + 10)
    record = quarantine.quarantine(client, big, queue=REGISTRATION_QUEUE, reason="not JSON")
    stored = quarantine.store(client).get(record.quarantine_id)
    assert stored is not None and stored.size == len(big) and len(stored.raw) == quarantine.MAX_RAW_BYTES
    assert stored.as_dict()["truncated"] is True
