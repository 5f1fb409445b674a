"""The ``hokusai-registry`` CLI (CliRunner and the installed script) and the failed-jobs store it reads.

Real Redis (``redis_url``) and real MLflow (``tracking_uri``); no mocks, no eager mode.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from devtools import builders
from devtools.builders import baseline_fields
from devtools.receiver import WebhookReceiver
from hokusai_app.cli import main
from hokusai_app.exit_codes import ExitCode, exit_code_for
from hokusai_registry import failed_jobs, quarantine
from hokusai_registry.contract import (
    REGISTER_TASK,
    REGISTRATION_QUEUE,
    RegistrationJob,
    job_json_schema,
)
from hokusai_registry.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    InvalidJobError,
    ModelNotFoundError,
    NotFoundError,
    RegistryUnavailableError,
)
from hokusai_registry.redis_client import connect
from hokusai_registry.webhook_policy import new_secret
from producers import enqueue_registration
from producers.enqueue import JobTimeoutError
from tests.support import staged_model
from worker.webhooks.event import build_event
from worker.webhooks.store import EventStore

SCRIPT = Path(sys.executable).with_name("hokusai-registry")
WALLET = "0x" + "cd" * 20
JOB_ID = "0b5d7a52-94a4-4f0e-8a52-0c6f0d3b9a11"


pytestmark = pytest.mark.usefixtures("staged_models_allowed")
M = staged_model("m")
M1 = staged_model("m1")
A = staged_model("a")
B = staged_model("b")
REFUSED = staged_model("refused")


def run(*args: str, input: str | None = None) -> Result:
    """Invoke the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def queued_jobs(redis_url: str, queue: str = REGISTRATION_QUEUE) -> list[dict[str, Any]]:
    """The job payloads (first task argument) waiting in ``queue``, oldest first."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    jobs = []
    for item in reversed(raw):
        message = json.loads(item)
        assert message["headers"]["task"] == REGISTER_TASK
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        jobs.append(args[0])
    return jobs


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ help and schema
def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


ALL_COMMANDS = list(_command_paths(main))


def test_every_command_is_covered() -> None:
    assert set(ALL_COMMANDS) >= {
        (),
        ("schema",),
        ("enqueue",),
        ("jobs",),
        ("jobs", "status"),
        ("jobs", "failed"),
        ("backfill-uuids",),
    }


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "main")
def test_help(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: main {' '.join(path)}".rstrip() + " [OPTIONS]")


def test_help_of_the_installed_script() -> None:
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: hokusai-registry [OPTIONS] COMMAND [ARGS]...")
    for command in ("schema", "enqueue", "jobs", "backfill-uuids"):
        assert command in done.stdout


def test_schema_prints_the_job_json_schema() -> None:
    result = run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == job_json_schema()
    assert schema["title"] == "RegistrationJob" and schema["additionalProperties"] is False


# ------------------------------------------------------------------ enqueue
def test_enqueue_from_flags(redis_url: str) -> None:
    result = run(
        "enqueue",
        "--job-id", JOB_ID,
        "--kind", "improved",
        "--model-type", "ranking",
        "--artifact-uri", M1,
        "--metadata", '{"dataset": "q3", "rows": 1200}',
        "--token-id", "RANK-Q3",
        "--tag", "user_id=7",
        "--tag", "fulfilled_by_user_id=9",
        "--baseline-id", "hokusai_ranking_baseline/3",
        "--contributor", WALLET,
        "--delta-metric", "ndcg=0.05",
        "--delta-metric", "mrr=-0.01",
        "--git-commit", "abc1234",
        "--pip-requirement", "scikit-learn==1.5.0",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{JOB_ID}\n"
    [job] = queued_jobs(redis_url)
    assert job["job_id"] == JOB_ID
    assert (job["kind"], job["model_type"], job["artifact_uri"]) == ("improved", "ranking", M1)
    assert job["metadata"] == {"dataset": "q3", "rows": 1200}
    assert job["token_id"] == "rank-q3"
    assert job["tags"] == {"user_id": "7", "fulfilled_by_user_id": "9"}
    assert job["baseline_id"] == "hokusai_ranking_baseline/3"
    assert job["contributor"] == WALLET
    assert job["delta_metrics"] == {"ndcg": 0.05, "mrr": -0.01}
    assert job["git"] == {"repo": None, "commit": "abc1234", "branch": None}
    assert job["pip_requirements"] == ["scikit-learn==1.5.0"]


def test_enqueue_from_file_with_a_flag_overriding_it(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"kind": "baseline", "model_type": "regression", "artifact_uri": A, "tags": {"x": "1"}}))

    result = run("enqueue", "--file", str(path), "--artifact-uri", B)

    assert result.exit_code == 0, result.output
    [job] = queued_jobs(redis_url)
    assert job["job_id"] == result.stdout.strip()
    assert (job["model_type"], job["artifact_uri"], job["tags"]) == ("regression", B, {"x": "1"})


def test_enqueue_from_stdin(redis_url: str) -> None:
    fields = {"kind": "baseline", "model_type": "lead_scoring", "artifact_uri": M, "job_id": JOB_ID}
    result = run("enqueue", "--file", "-", input=json.dumps(fields))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{JOB_ID}\n"
    assert [job["job_id"] for job in queued_jobs(redis_url)] == [JOB_ID]


def test_enqueue_from_stdin_with_the_installed_script(redis_url: str) -> None:
    fields = {"kind": "baseline", "model_type": "classification", "artifact_uri": M, "job_id": JOB_ID}
    done = subprocess.run(
        [SCRIPT, "enqueue", "--file", "-"],
        input=json.dumps(fields),
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{JOB_ID}\n"
    [job] = queued_jobs(redis_url)
    assert (job["job_id"], job["model_type"]) == (JOB_ID, "classification")


def test_bad_job_exits_2_naming_the_field(redis_url: str) -> None:
    result = run(
        "enqueue", "--kind", "improved", "--model-type", "ranking", "--artifact-uri", M,
        "--baseline-id", "hokusai_ranking_baseline/1", "--delta-metric", "ndcg=0.1", "--contributor", "0x12",
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Error: invalid registration job: contributor: must be 0x followed by 40 hex characters (got '0x12')\n"
    )
    assert queued_jobs(redis_url) == []


def test_improved_job_without_baseline_exits_2(redis_url: str) -> None:
    result = run("enqueue", "--kind", "improved", "--model-type", "ranking", "--artifact-uri", M)
    assert result.exit_code == 2
    assert "an improved job needs baseline_id, delta_metrics, contributor" in result.stderr
    assert "Traceback" not in result.output


def test_missing_fields_exit_2_naming_them(redis_url: str) -> None:
    result = run("enqueue", "--kind", "baseline")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: invalid registration job: model_type: Field required; artifact_uri: Field required\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--metadata", "{not json"], "Invalid value for '--metadata': not valid JSON"),
        (["--delta-metric", "ndcg"], "Invalid value for '--delta-metric': expected KEY=VALUE, got 'ndcg'"),
        (["--delta-metric", "ndcg=high"], "Invalid value for '--delta-metric': ndcg: 'high' is not a number"),
        (["--tag", "=v"], "Invalid value for '--tag': expected KEY=VALUE, got '=v'"),
    ],
)
def test_bad_flag_values_exit_2(redis_url: str, args: list[str], expected: str) -> None:
    result = run("enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M, *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert queued_jobs(redis_url) == []


def test_file_that_is_not_a_job_object_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text("[1, 2]")
    result = run("enqueue", "--file", str(path))
    assert result.exit_code == 2
    assert "Invalid value for '--file': must hold a JSON object" in result.stderr


def test_redis_down_exits_unavailable_without_traceback_or_password(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("ENQUEUE_RETRY_S", "0.5")
    monkeypatch.setenv("HOKUSAI_OUTBOX", "false")  # the caller who wants the error (the outbox is on by default)
    result = run("enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert result.stderr.splitlines()[-1].startswith(f"Error: Redis at redis://127.0.0.1:{port}/0 is unreachable")
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


def test_invalid_settings_exit_2_without_echoing_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://:hunter2@example")
    result = run("jobs", "failed")
    assert result.exit_code == 2
    assert (
        result.stderr == "Error: invalid settings: REDIS_URL: REDIS_URL must be a redis://, rediss:// or unix:// URL"
        " (fix the environment variable; see docs/configuration.md)\n"
    )


# ------------------------------------------------------------------ status and waiting
def test_jobs_status_of_a_queued_job(redis_url: str) -> None:
    job_id = run("enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M).stdout.strip()
    result = run("jobs", "status", job_id)
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert (status["job_id"], status["state"], status["result"], status["error"]) == (job_id, "PENDING", None, None)


def test_jobs_status_with_a_bad_id_exits_2(redis_url: str) -> None:
    result = run("jobs", "status", "not-a-uuid")
    assert result.exit_code == 2
    assert result.stderr == "Error: job_id must be a UUID, got 'not-a-uuid'\n"


def test_enqueue_wait_times_out_with_the_timeout_code(redis_url: str) -> None:
    result = run(
        "enqueue", "--job-id", JOB_ID, "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M,
        "--wait", "--timeout", "0.2",
    )  # fmt: skip
    assert result.exit_code == ExitCode.TIMEOUT
    assert result.stderr.splitlines()[-1] == (f"Error: job {JOB_ID} did not finish within 0.2s (last state: PENDING)")


def test_enqueue_wait_prints_the_result(stand_in_worker: Celery) -> None:
    result = run(
        "enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M, "--wait", "--timeout", "30"
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["state"] == "SUCCESS"
    assert status["result"] == {"job_id": status["job_id"], "model_id": "hokusai_ranking_baseline/1"}
    assert f"enqueued job {status['job_id']}" in result.stderr


def test_enqueue_wait_for_a_failing_job_exits_1(stand_in_worker: Celery) -> None:
    result = run(
        "enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", REFUSED,
        "--wait", "--timeout", "30",
    )  # fmt: skip
    assert result.exit_code == 1
    status = json.loads(result.stdout)
    assert status["state"] == "FAILURE"
    assert status["error"] == {"type": "InvalidJobError", "message": "artifact_uri: the stand-in refuses this model"}


# ------------------------------------------------------------------ failed-jobs store
@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    yield client
    client.close()


def test_record_and_get_a_failure(store: redis.Redis) -> None:
    job = {"kind": "baseline", "model_type": "ranking", "artifact_uri": M, "job_id": JOB_ID}
    stored = failed_jobs.record_failure(
        store,
        JOB_ID,
        reason="artifact_uri: no MLmodel in /m",
        error_type="hokusai_registry.errors.ArtifactNotFoundError",
        job=job,
        attempts=3,
        task=REGISTER_TASK,
    )
    assert failed_jobs.get_failure(store, JOB_ID) == stored
    raw = json.loads(store.hget(failed_jobs.FAILED_JOBS_KEY, JOB_ID))
    assert raw["job"] == job and raw["attempts"] == 3 and raw["task"] == REGISTER_TASK
    assert raw["error_type"] == "hokusai_registry.errors.ArtifactNotFoundError"
    assert datetime.fromisoformat(raw["failed_at"]).utcoffset() == timedelta(0)
    assert store.zscore(failed_jobs.FAILED_JOBS_INDEX_KEY, JOB_ID) == pytest.approx(stored.failed_at.timestamp())


def test_failed_at_is_stored_in_utc(store: redis.Redis) -> None:
    paris = timezone(timedelta(hours=2))
    record = failed_jobs.record_failure(
        store, "j1", reason="r", error_type="E", failed_at=datetime(2026, 5, 1, 12, 0, tzinfo=paris)
    )
    assert record.failed_at == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    naive = failed_jobs.record_failure(store, "j2", reason="r", error_type="E", failed_at=datetime(2026, 5, 1, 12, 0))
    assert naive.failed_at == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_list_failures_oldest_first_and_since(store: redis.Redis) -> None:
    day = datetime(2026, 5, 1, tzinfo=UTC)
    for offset, job_id in [(2, "late"), (0, "early"), (1, "middle")]:
        failed_jobs.record_failure(store, job_id, reason="r", error_type="E", failed_at=day + timedelta(hours=offset))
    assert [r.job_id for r in failed_jobs.list_failures(store)] == ["early", "middle", "late"]
    assert [r.job_id for r in failed_jobs.list_failures(store, since=day + timedelta(hours=1))] == ["middle", "late"]
    assert failed_jobs.list_failures(store, since=day + timedelta(days=1)) == []


def test_recording_again_replaces_the_record(store: redis.Redis) -> None:
    failed_jobs.record_failure(store, JOB_ID, reason="first", error_type="E", attempts=1)
    failed_jobs.record_failure(store, JOB_ID, reason="second", error_type="E", attempts=2)
    [record] = failed_jobs.list_failures(store)
    assert (record.reason, record.attempts) == ("second", 2)


def test_remove_failure(store: redis.Redis) -> None:
    failed_jobs.record_failure(store, JOB_ID, reason="r", error_type="E")
    assert failed_jobs.remove_failure(store, JOB_ID) is True
    assert failed_jobs.remove_failure(store, JOB_ID) is False
    assert failed_jobs.get_failure(store, JOB_ID) is None
    assert store.exists(failed_jobs.FAILED_JOBS_KEY, failed_jobs.FAILED_JOBS_INDEX_KEY) == 0


def test_unreadable_record_is_skipped(store: redis.Redis) -> None:
    failed_jobs.record_failure(store, "good", reason="r", error_type="E")
    store.hset(failed_jobs.FAILED_JOBS_KEY, "bad", "{not json")
    store.zadd(failed_jobs.FAILED_JOBS_INDEX_KEY, {"bad": 0})
    assert [r.job_id for r in failed_jobs.list_failures(store)] == ["good"]


def test_error_type_of() -> None:
    assert failed_jobs.error_type_of(BrokerUnavailableError("x")) == "hokusai_registry.errors.BrokerUnavailableError"


def test_store_with_redis_down_names_the_host_not_the_password() -> None:
    port = closed_port()
    client = connect(f"redis://:hunter2@127.0.0.1:{port}/3")
    with pytest.raises(BrokerUnavailableError) as caught:
        failed_jobs.list_failures(client)
    assert str(caught.value).startswith(f"Redis at 127.0.0.1:{port}/3 is unreachable while listing failed jobs")
    assert "hunter2" not in str(caught.value)


def test_jobs_failed_lists_recorded_failures(store: redis.Redis) -> None:
    day = datetime(2026, 5, 1, tzinfo=UTC)
    failed_jobs.record_failure(store, "a", reason="ra", error_type="E1", job={"k": 1}, attempts=4, failed_at=day)
    failed_jobs.record_failure(store, "b", reason="rb", error_type="E2", failed_at=day + timedelta(hours=1))

    result = run("jobs", "failed")

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(r["job_id"], r["reason"], r["error_type"], r["attempts"]) for r in listed] == [
        ("a", "ra", "E1", 4),
        ("b", "rb", "E2", 1),
    ]
    assert listed[0]["job"] == {"k": 1}
    assert listed[0]["failed_at"] == "2026-05-01T00:00:00Z"
    assert result.stderr == "2 failed job(s)\n"
    since = run("jobs", "failed", "--since", "2026-05-01T00:30:00+00:00")
    assert [r["job_id"] for r in json.loads(since.stdout)] == ["b"]


def test_jobs_failed_with_the_installed_script(store: redis.Redis, redis_url: str) -> None:
    failed_jobs.record_failure(store, JOB_ID, reason="gone", error_type="E")
    done = subprocess.run(
        [SCRIPT, "jobs", "failed"],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [r["job_id"] for r in json.loads(done.stdout)] == [JOB_ID]


def test_jobs_failed_with_a_bad_since_exits_2(redis_url: str) -> None:
    result = run("jobs", "failed", "--since", "yesterday")
    assert result.exit_code == 2
    assert "expected an ISO-8601 date/time" in result.stderr and "got 'yesterday'" in result.stderr


# ------------------------------------------------------------------ backfill-uuids
LEGACY_MODEL = "legacy_lead_scoring"


@pytest.fixture
def legacy_versions(tracking_uri: str, registry: Any, sk_model: Any) -> dict[str, str]:
    """Two versions registered the OLD way (no model_uuid tag) and one the new way.

    Returns ``{version: model_id}`` of the legacy versions.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.tracking import MlflowClient

    registry.register_baseline(sk_model, "lead_scoring", pip_requirements=["scikit-learn"])
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_ids: dict[str, str] = {}
    for _ in range(2):
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                sk_model, name="model", registered_model_name=LEGACY_MODEL, pip_requirements=["scikit-learn"]
            )
        model_ids[str(info.registered_model_version)] = info.model_id
    for version in client.search_model_versions(f"name = '{LEGACY_MODEL}'"):
        if "model_uuid" in version.tags:
            client.delete_model_version_tag(LEGACY_MODEL, version.version, "model_uuid")
    return model_ids


def _legacy_tags(tracking_uri: str) -> dict[str, str | None]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return {str(v.version): v.tags.get("model_uuid") for v in client.search_model_versions(f"name = '{LEGACY_MODEL}'")}


def _tagged(report: dict[str, Any]) -> list[dict[str, str]]:
    return sorted(({**item, "version": str(item["version"])} for item in report["tagged"]), key=lambda i: i["version"])


def test_backfill_uuids_dry_run_then_real_run_then_nothing(tracking_uri: str, legacy_versions: dict[str, str]) -> None:
    expected = sorted(
        ({"model_name": LEGACY_MODEL, "version": v, "model_uuid": u} for v, u in legacy_versions.items()),
        key=lambda item: item["version"],
    )

    dry = run("backfill-uuids", "--dry-run", "--tracking-uri", tracking_uri)
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["scanned"], report["already_tagged"], report["unresolved"]) == (True, 3, 1, [])
    assert _tagged(report) == expected
    assert "dry run: would tag 2 of 3 version(s); 1 already tagged, 0 unresolved" in dry.stderr
    assert _legacy_tags(tracking_uri) == dict.fromkeys(legacy_versions)

    real = run("backfill-uuids", "--tracking-uri", tracking_uri)
    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    assert report["dry_run"] is False
    assert _tagged(report) == expected
    assert "tagged 2 of 3 version(s)" in real.stderr
    assert _legacy_tags(tracking_uri) == legacy_versions

    again = run("backfill-uuids", "--tracking-uri", tracking_uri)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["tagged"], report["already_tagged"], report["scanned"]) == ([], 3, 3)
    assert _legacy_tags(tracking_uri) == legacy_versions


def test_an_unusable_store_is_a_clean_message_not_a_traceback(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hokusai_app.cli import main

    not_a_database = tmp_path / "store.db"
    not_a_database.write_text("this is not sqlite")
    result = CliRunner().invoke(main, ["backfill-uuids", "--tracking-uri", f"sqlite:///{not_a_database}"])
    assert result.exit_code == ExitCode.UNAVAILABLE, result.output
    assert "Error: MLflow store unavailable while opening the MLflow store" in result.output
    assert "Traceback" not in result.output


def test_an_mlflow_error_is_a_clean_message_not_a_traceback() -> None:
    from click.testing import CliRunner

    from hokusai_app.cli import main

    result = CliRunner().invoke(main, ["backfill-uuids", "--tracking-uri", "nosuchscheme://host/store"])
    assert result.exit_code == 2, result.output
    assert "Error: MLflow: " in result.output and "nosuchscheme" in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ exit codes (the installed script)
CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
_EXIT_ROW = re.compile(r"^\|\s*(?P<code>\d+)\s*\|\s*`(?P<name>[A-Z_]+)`\s*\|(?P<meaning>.*)\|\s*$")
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"


def script(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``hokusai-registry`` console script (the environment of the test, plus ``env``)."""
    return subprocess.run([SCRIPT, *args], env={**os.environ, **(env or {})}, input=input, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def documented_exit_codes() -> list[tuple[int, str, str]]:
    section = CLI_DOC.read_text(encoding="utf-8").split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [_EXIT_ROW.match(line.strip()) for line in section.splitlines()]
    return [(int(row["code"]), row["name"], row["meaning"].strip()) for row in rows if row]


def test_the_documented_exit_codes_are_the_codes() -> None:
    assert documented_exit_codes() == [(code.value, code.name, code.meaning) for code in ExitCode]
    assert "[docs/cli.md](docs/cli.md)" in (CLI_DOC.parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_top_level_help_prints_the_exit_codes() -> None:
    done = script("--help")
    assert done.returncode == ExitCode.OK, done.stderr
    help_text = " ".join(done.stdout.split())
    assert "Exit codes (the same for every command; docs/cli.md):" in help_text
    for code in ExitCode:
        assert f"{code.value} {code.name}: {' '.join(code.meaning.replace('`', '').split())}" in help_text


def _mlflow_error() -> BaseException:
    from mlflow.exceptions import MlflowException

    return MlflowException("unsupported scheme")


@pytest.mark.parametrize(
    ("make_error", "code"),
    [
        (lambda: JobTimeoutError("job x did not finish within 1s"), ExitCode.TIMEOUT),
        (lambda: NotFoundError("no failed job 'x'"), ExitCode.NOT_OK),
        (lambda: ModelNotFoundError("no model 'm'"), ExitCode.NOT_OK),
        (lambda: BrokerUnavailableError("Redis at ... is unreachable"), ExitCode.UNAVAILABLE),
        (lambda: RegistryUnavailableError("MLflow store unavailable"), ExitCode.UNAVAILABLE),
        (lambda: InvalidJobError("contributor: ..."), ExitCode.USAGE),
        (lambda: ConfigurationError("invalid settings: ..."), ExitCode.USAGE),
        (_mlflow_error, ExitCode.USAGE),
        (lambda: TimeoutError("a socket's, not a product error"), ExitCode.INTERNAL),
        (lambda: KeyError("a bug"), ExitCode.INTERNAL),
    ],
)
def test_which_error_exits_how(make_error: Callable[[], BaseException], code: ExitCode) -> None:
    assert exit_code_for(make_error()) is code


@pytest.fixture
def records(redis_url: str) -> dict[str, str]:
    """One of each record the commands name: a failed job, a quarantined message, a dead-lettered event."""
    client = connect(redis_url)
    job = RegistrationJob(**baseline_fields(M, model_type="ranking", token_id="tok")).model_dump(mode="json")
    failed_jobs.record_failure(client, job["job_id"], reason="boom", error_type="E", job=job, task=REGISTER_TASK)
    failed_jobs.record_failure(client, "not-replayable", reason="junk", error_type="E", job={"raw": "x"})
    quarantined = quarantine.quarantine(client, b"junk", queue=REGISTRATION_QUEUE, reason="not JSON")
    store = EventStore(client)
    event = store.save_if_absent(builders.event("1", model_type="ranking", token_id="tok"))
    store.dead_letter(event.event_id, "gave up")
    client.close()
    return {"JOB": job["job_id"], "QUARANTINED": quarantined.quarantine_id, "EVENT": event.event_id}


@pytest.mark.parametrize(
    "args",
    [
        ["schema"],
        ["jobs", "failed"],
        ["jobs", "show-failed", "JOB"],
        ["jobs", "retry", "JOB"],
        ["jobs", "quarantined", "--since", "2026-01-01"],
        ["jobs", "show-quarantined", "QUARANTINED"],
        ["jobs", "remove-quarantined", "QUARANTINED"],
        ["webhooks", "failed"],
        ["webhooks", "show", "EVENT"],
        ["webhooks", "new-secret"],
    ],
    ids=" ".join,
)
def test_done_exits_ok(records: dict[str, str], args: list[str]) -> None:
    done = script(*(records.get(arg, arg) for arg in args))
    assert done.returncode == ExitCode.OK, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "status", UNKNOWN_JOB], f"job {UNKNOWN_JOB} is unknown"),
        (["jobs", "show-failed", UNKNOWN_JOB], f"Error: no failed job '{UNKNOWN_JOB}'"),
        (["jobs", "retry", UNKNOWN_JOB], f"Error: no failed job '{UNKNOWN_JOB}'"),
        (["jobs", "show-quarantined", "nope"], "Error: no quarantined message 'nope'"),
        (["jobs", "remove-quarantined", "nope"], "Error: no quarantined message 'nope'"),
        (["webhooks", "show", "nope"], "Error: no stored webhook event 'nope'"),
        (["webhooks", "replay", "nope"], "0 delivered, 1 still undelivered"),
    ],
    ids=lambda value: " ".join(value[:2]) if isinstance(value, list) else "",
)
def test_not_found_exits_not_ok(records: dict[str, str], args: list[str], message: str) -> None:
    done = script(*args)
    assert done.returncode == ExitCode.NOT_OK, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-command"], "No such command 'no-such-command'"),
        (["jobs", "status"], "Missing argument 'JOB_ID'"),
        (["jobs", "status", "not-a-uuid"], "Error: job_id must be a UUID, got 'not-a-uuid'"),
        (["jobs", "failed", "--since", "yesterday"], "expected an ISO-8601 date/time"),
        (["jobs", "retry", "not-replayable"], "has no replayable input"),
        (["enqueue", "--kind", "baseline"], "Error: invalid registration job: model_type: Field required"),
        (["webhooks", "replay"], "Error: name the EVENT_IDS to replay, or pass --all"),
        (["webhooks", "replay", "EVENT", "--all"], "Error: name EVENT_IDS or pass --all, not both"),
        (["webhooks", "replay", "EVENT", "--since", "2026-01-01"], "Error: --since goes with --all"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_bad_usage_or_input_exits_usage(records: dict[str, str], args: list[str], message: str) -> None:
    done = script(*(records.get(arg, arg) for arg in args))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    if args[:2] == ["webhooks", "replay"]:
        assert "not both" not in done.stderr or "--all" in args  # the message says what was wrong


def test_invalid_settings_exit_usage() -> None:
    done = script("jobs", "failed", env={"REDIS_URL": "http://:hunter2@example"})
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Error: invalid settings: REDIS_URL" in done.stderr and "hunter2" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M],
        ["jobs", "status", UNKNOWN_JOB],
        ["jobs", "failed"],
        ["jobs", "show-failed", UNKNOWN_JOB],
        ["jobs", "retry", UNKNOWN_JOB],
        ["jobs", "quarantined"],
        ["webhooks", "failed"],
        ["webhooks", "show", "nope"],
        ["webhooks", "replay", "--all"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_an_unreachable_redis_exits_unavailable(args: list[str]) -> None:
    port = closed_port()
    env = {"REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0", "ENQUEUE_RETRY_S": "0.5", "HOKUSAI_OUTBOX": "false"}
    done = script(*args, env=env)
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "unreachable" in done.stderr.splitlines()[-1]
    assert "hunter2" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_enqueue_wait_past_its_timeout_exits_timeout(redis_url: str) -> None:
    done = script("enqueue", "--job-id", JOB_ID, "--kind", "baseline", "--model-type", "ranking",
                  "--artifact-uri", M, "--wait", "--timeout", "0.2")  # fmt: skip
    assert done.returncode == ExitCode.TIMEOUT, done.stderr
    assert done.stderr.splitlines()[-1] == f"Error: job {JOB_ID} did not finish within 0.2s (last state: PENDING)"


def test_replay_exit_codes_with_a_receiver(records: dict[str, str]) -> None:
    """A replay to an endpoint that refuses exits NOT_OK and keeps the dead letter; delivered, it exits OK."""
    secret = new_secret()
    with WebhookReceiver(secret) as receiver:
        env = {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": secret, "WEBHOOK_ALLOW_HTTP": "true"}
        receiver.script(503)
        refused = script("webhooks", "replay", records["EVENT"], env=env)
        assert refused.returncode == ExitCode.NOT_OK, refused.stderr
        assert list(json.loads(refused.stdout)["failed"]) == [records["EVENT"]]
        delivered = script("webhooks", "replay", "--all", env=env)
        assert delivered.returncode == ExitCode.OK, delivered.stderr
        assert json.loads(delivered.stdout)["delivered"] == [records["EVENT"]]
    no_secret = script("webhooks", "replay", "--all", env={"WEBHOOK_URL": "https://127.0.0.1:9/hook"})
    assert no_secret.returncode == ExitCode.USAGE and "WEBHOOK_SECRET" in no_secret.stderr


# ------------------------------------------------------------------ jobs status reads the event store
def test_jobs_status_reads_a_replayed_webhook_as_delivered(redis_url: str) -> None:
    job_id = enqueue_registration(baseline_fields(M, model_type="ranking", token_id="tok"))
    store = EventStore(connect(redis_url))
    event = store.save_if_absent(
        build_event({"model_name": "hokusai_ranking_baseline", "version": "1"},
                    RegistrationJob(**baseline_fields(M, model_type="ranking", token_id="tok", job_id=job_id)))
    )  # fmt: skip
    store.record_attempt(event.event_id, status_code=500, error="endpoint answered 500")
    store.dead_letter(event.event_id, "gave up after 1 attempts: endpoint answered 500")

    dead = script("jobs", "status", job_id)
    assert dead.returncode == ExitCode.OK, dead.stderr
    dead_webhook = json.loads(dead.stdout)["webhook"]
    assert (dead_webhook["state"], dead_webhook["event_id"]) == ("FAILURE", event.event_id)
    assert dead_webhook["replay"] == f"hokusai-registry webhooks replay {event.event_id}"

    secret = new_secret()
    with WebhookReceiver(secret) as receiver:
        env = {"WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": secret, "WEBHOOK_ALLOW_HTTP": "true"}
        replayed = script("webhooks", "replay", event.event_id, env=env)
    assert replayed.returncode == ExitCode.OK, replayed.stderr

    status = script("jobs", "status", job_id)
    assert status.returncode == ExitCode.OK, status.stderr
    webhook = json.loads(status.stdout)["webhook"]
    assert webhook["state"] == "SUCCESS", webhook
    assert (webhook["event_id"], webhook["delivery"], webhook["attempts"]) == (event.event_id, "delivered", 2)
    assert webhook["delivered_at"] is not None and "replay" not in webhook and "error" not in webhook
    shown = json.loads(script("webhooks", "show", event.event_id).stdout)
    assert shown["state"] == "delivered" and [a["status_code"] for a in shown["history"]] == [500, 200]
    assert (dead_webhook["delivery"], dead_webhook["attempts"]) == ("dead", 1)  # as read before the replay


def test_enqueue_with_redis_away_spools_to_the_outbox_and_exits_0(tmp_path: Path) -> None:
    """The outbox is on by default: the installed command returns the job id and says how it will be sent."""
    port = closed_port()
    outbox = tmp_path / "outbox"
    env = {
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
        "ENQUEUE_RETRY_S": "0.2",
        "HOKUSAI_OUTBOX_DIR": str(outbox),
    }
    done = script("enqueue", "--job-id", JOB_ID, "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", M,
                  env=env)  # fmt: skip
    assert done.returncode == ExitCode.OK, done.stderr
    assert JOB_ID in done.stdout and "outbox" in done.stderr and "hunter2" not in done.stdout + done.stderr
    assert [path.name for path in outbox.iterdir()] == [f"{JOB_ID}.json"]
