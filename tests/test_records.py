"""The one record-store design (failed jobs, dead letters, quarantine), honest status and the operator commands."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from devtools.builders import baseline_fields
from hokusai_app.cli import main
from hokusai_registry import failed_jobs, quarantine
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE, RegistrationJob
from hokusai_registry.errors import InvalidInputError
from hokusai_registry.records import RecordStore, parse_since
from hokusai_registry.redis_client import connect
from hokusai_registry.webhook_policy import new_secret
from producers import enqueue_registration
from tests.support import staged_model
from worker.webhooks.event import build_event
from worker.webhooks.store import EventStore


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


pytestmark = pytest.mark.usefixtures("staged_models_allowed")


def job_fields(**overrides: str) -> dict[str, str]:
    return baseline_fields(staged_model("m"), **{"model_type": "ranking", "token_id": "tok", **overrides})


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


# ------------------------------------------------------------------ one time rule
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T09:23:14", datetime(2026, 11, 27, 9, 23, 14, tzinfo=UTC)),
        ("2026-11-27T09:23:14Z", datetime(2026, 11, 27, 9, 23, 14, tzinfo=UTC)),
        ("2026-11-27T11:23:14+02:00", datetime(2026, 11, 27, 9, 23, 14, tzinfo=UTC)),
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
    ],
)
def test_parse_since_forms(text: str, expected: datetime) -> None:
    assert parse_since(text) == expected


def test_parse_since_refuses_words() -> None:
    with pytest.raises(InvalidInputError, match="ISO-8601"):
        parse_since("yesterday")


@pytest.mark.parametrize("command", [["jobs", "failed"], ["jobs", "quarantined"], ["webhooks", "failed"]])
def test_every_since_takes_the_same_forms(redis_url: str, command: list[str]) -> None:
    for text in ("2026-11-27T09:23:14", "2026-11-27T09:23:14Z", "2026-11-27T09:23:14+01:00"):
        result = run(*command, "--since", text)
        assert result.exit_code == 0, (text, result.output)
    refused = run(*command, "--since", "yesterday")
    assert refused.exit_code == 2 and "ISO-8601" in refused.stderr


# ------------------------------------------------------------------ one store design
def test_the_three_stores_share_one_layout(client: redis.Redis) -> None:
    failed_jobs.record_failure(client, "j1", reason="r", error_type="E")
    record = quarantine.quarantine(client, b"junk", queue=REGISTRATION_QUEUE, reason="not JSON")
    store = EventStore(client)
    event = store.save_if_absent(build_event({"model_name": "m", "version": "1"}, RegistrationJob(**job_fields())))
    store.dead_letter(event.event_id, "gave up")
    for key, member in [
        ("hokusai:failed_jobs", "j1"),
        ("hokusai:quarantine", record.quarantine_id),
        ("hokusai:webhook:dead_letters", event.event_id),
    ]:
        assert client.type(key) == b"hash" and client.hexists(key, member)
        assert client.type(f"{key}:by_time") == b"zset" and client.zscore(f"{key}:by_time", member) is not None


def test_a_store_keeps_at_most_max_records_dropping_the_oldest(client: redis.Redis) -> None:
    store = RecordStore(client, "test:capped", failed_jobs.FailureRecord, id_field="job_id", time_field="failed_at",
                        max_records=3)  # fmt: skip
    day = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(5):
        store.put(failed_jobs.FailureRecord(job_id=f"j{n}", reason="r", error_type="E", failed_at=day + timedelta(n),
                                            attempts=1))  # fmt: skip
    assert [r.job_id for r in store.list()] == ["j2", "j3", "j4"]
    assert client.hlen("test:capped") == 3


# ------------------------------------------------------------------ honest status
def test_status_of_a_never_enqueued_job_is_unknown_and_exits_1(redis_url: str) -> None:
    result = run("jobs", "status", str(uuid.uuid4()))
    assert result.exit_code == 1
    assert json.loads(result.stdout)["state"] == "UNKNOWN"
    assert "unknown" in result.stderr


def test_status_of_an_enqueued_job_is_pending(redis_url: str) -> None:
    job_id = enqueue_registration(job_fields())
    result = run("jobs", "status", job_id)
    assert result.exit_code == 0 and json.loads(result.stdout)["state"] == "PENDING"


def test_a_dead_lettered_webhook_shows_as_failed_with_the_replay_command(client: redis.Redis) -> None:
    job_id = enqueue_registration(job_fields())
    store = EventStore(client)
    event = store.save_if_absent(
        build_event({"model_name": "m", "version": "3"}, RegistrationJob(**job_fields(job_id=job_id)))
    )
    store.dead_letter(event.event_id, "endpoint answered 500 five times")
    status = json.loads(run("jobs", "status", job_id).stdout)["webhook"]
    assert status["state"] == "FAILURE"
    assert status["event_id"] == event.event_id
    assert status["replay"] == f"hokusai-registry webhooks replay {event.event_id}"
    assert status["error"] == "endpoint answered 500 five times"


def test_replaying_a_delivered_event_says_so_and_exits_0(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("WEBHOOK_ALLOW_HTTP", "true")
    monkeypatch.setenv("WEBHOOK_SECRET", new_secret())
    store = EventStore(client)
    event = store.save_if_absent(build_event({"model_name": "m", "version": "1"}, RegistrationJob(**job_fields())))
    store.mark_delivered(event.event_id)
    result = run("webhooks", "replay", event.event_id)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"delivered": [], "already_delivered": [event.event_id], "failed": {}}
    assert "already delivered" in result.stderr


# ------------------------------------------------------------------ jobs retry
def test_jobs_retry_republishes_with_the_same_id_and_removes_the_record(client: redis.Redis) -> None:
    job = RegistrationJob(**job_fields()).model_dump(mode="json")
    failed_jobs.record_failure(client, job["job_id"], reason="boom", error_type="E", job=job, task=REGISTER_TASK)
    shown = run("jobs", "show-failed", job["job_id"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["reason"] == "boom"

    result = run("jobs", "retry", job["job_id"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == job["job_id"]
    [raw] = client.lrange(REGISTRATION_QUEUE, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["id"] == job["job_id"] and message["headers"]["task"] == REGISTER_TASK
    assert failed_jobs.get_failure(client, job["job_id"]) is None
    again = run("jobs", "retry", job["job_id"])
    assert again.exit_code == 1 and "no failed job" in again.stderr  # NOT_OK (docs/cli.md)


@pytest.mark.slow
def test_a_failed_job_retried_from_the_cli_registers_with_the_same_id(
    worker_env: dict[str, str], redis_url: str, staging: Any, sk_model: Any, tmp_path: Any
) -> None:
    import shutil

    from tests.queue_helpers import client_app, save_model_dir, wait_result
    from tests.worker_process import WorkerProcess, wait_until

    model_dir = save_model_dir(sk_model, staging)
    kept = tmp_path / "kept-model"
    shutil.copytree(model_dir, kept)
    job_id = enqueue_registration(job_fields(artifact_uri=str(model_dir), model_type="classification"))
    shutil.rmtree(model_dir)  # gone before a worker runs the job: it fails for good
    client = connect(redis_url)
    app = client_app(redis_url)
    with WorkerProcess(worker_env, tmp_path) as worker:
        assert wait_result(app, job_id).state == "FAILURE", worker.log_tail()
        record = failed_jobs.get_failure(client, job_id)  # recorded before Celery stored FAILURE
        assert record is not None and record.task == REGISTER_TASK and record.job is not None

        shutil.copytree(kept, model_dir)  # the operator fixed the cause
        result = run("jobs", "retry", job_id)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == job_id
        assert failed_jobs.get_failure(client, job_id) is None
        from producers.enqueue import job_status

        # job_status reads the backend uncached: this process already saw the first run's FAILURE
        done = wait_until(
            lambda: (status := job_status(job_id))["state"] == "SUCCESS" and status,
            timeout_s=60,
            what=f"the retried job\n{worker.log_tail()}",
        )
        assert done["result"]["job_id"] == job_id
    assert failed_jobs.get_failure(client, job_id) is None


def test_a_failed_job_is_recorded_before_celery_stores_failure(
    worker_env: dict[str, str], redis_url: str, staging: Any, sk_model: Any, tmp_path: Any
) -> None:
    """Whoever sees FAILURE (``jobs status``) finds the job in ``jobs failed``: Redis's own order of writes."""
    import shutil
    import threading

    from tests.queue_helpers import client_app, save_model_dir, wait_result
    from tests.worker_process import WorkerProcess

    model_dir = save_model_dir(sk_model, staging)
    job_id = enqueue_registration(job_fields(artifact_uri=str(model_dir), model_type="classification"))
    shutil.rmtree(model_dir)  # it fails for good
    commands: list[str] = []
    watcher = connect(redis_url)

    def watch() -> None:  # MONITOR: every command the server executes, in its order
        try:
            with watcher.monitor() as monitor:
                for entry in monitor.listen():
                    if job_id in entry["command"]:
                        commands.append(entry["command"][:200])
        except (redis.RedisError, ValueError):
            pass  # the connection is closed when the test ends

    threading.Thread(target=watch, daemon=True).start()
    with WorkerProcess(worker_env, tmp_path) as worker:
        assert wait_result(client_app(redis_url), job_id).state == "FAILURE", worker.log_tail()
    watcher.close()
    record_writes = [i for i, c in enumerate(commands) if c.startswith("HSET") and failed_jobs.FAILED_JOBS_KEY in c]
    failure_states = [i for i, c in enumerate(commands) if f"celery-task-meta-{job_id}" in c and '"FAILURE"' in c]
    assert record_writes and failure_states, commands
    assert record_writes[0] < failure_states[0], commands
    assert len(record_writes) == 1, commands  # once: on_failure sees the body recorded it
