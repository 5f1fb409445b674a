"""Operating it: job context on every log line (text and JSON), `hokusai-registry doctor`, the demo, and the
installed command against a real worker: `enqueue --wait` exit codes, a dead letter replayed (`jobs status`,
`webhooks show`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.builders import improved_fields
from devtools.devstack import free_port
from devtools.receiver import WebhookReceiver
from hokusai_app.exit_codes import ExitCode
from hokusai_registry.contract import webhook_task_id
from producers import enqueue_registration
from tests.queue_helpers import client_app, job_fields, save_model_dir, wait_result
from tests.test_webhooks_e2e import SECRET
from tests.worker_process import ROOT, WorkerProcess

SCRIPT = Path(sys.executable).with_name("hokusai-registry")

pytestmark = pytest.mark.slow


def run_logged_job(env: dict[str, str], tmp_path: Path, staging: Path, model: Any) -> tuple[str, dict[str, Any], str]:
    """One job whose webhook fails once then succeeds; returns (job id, webhook outcome, worker log)."""
    with WebhookReceiver(SECRET) as receiver:
        receiver.script(500, 200)
        worker_env = {**env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
        with WorkerProcess(worker_env, tmp_path) as worker:
            job_id = enqueue_registration(job_fields(save_model_dir(model, staging)))
            outcome = wait_result(client_app(env["REDIS_URL"]), webhook_task_id(job_id), timeout_s=90)
            assert outcome.result["status"] == "delivered", worker.log_tail()
        return job_id, outcome.result, worker.log_text()


def test_json_logs_carry_the_job_context_on_every_line(
    worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path, redis_url: str
) -> None:
    job_id, outcome, log = run_logged_job({**worker_env, "LOG_FORMAT": "json"}, tmp_path, staging, sk_model)
    registered = client_app(redis_url).AsyncResult(job_id).result
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records, "LOG_FORMAT=json prints one JSON object per line"

    mentions = [i for i, r in enumerate(records) if job_id in r["message"]]
    during_the_job = records[mentions[0] : mentions[-1] + 1]  # from "Task ... received" on; start-up lines before
    about_the_job = [
        r
        for r in during_the_job
        if (job_id in r["message"] or r["logger"].startswith(("worker.", "celery.app.trace")))
        # the pool process's own start-up (opening the store) may still be logging when the job arrives
        and not r["message"].startswith("MLflow store: ")
    ]
    assert len(about_the_job) >= 4
    for record in about_the_job:
        assert record.get("job_id") == job_id, record
    (done,) = [r for r in records if r["message"].startswith("registered ")]
    assert done["model_uuid"] == registered["model_uuid"] and done["version"] == registered["version"]
    webhook_lines = [r for r in records if r["logger"].startswith("worker.") and "webhook" in r["message"]]
    assert any("retrying" in r["message"] for r in webhook_lines)
    for record in webhook_lines:
        assert record.get("event_id") == outcome["event_id"], record
        assert record.get("version") == registered["version"], record
        assert record.get("model_uuid") == registered["model_uuid"], record


def test_text_logs_carry_the_job_context(
    worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    job_id, outcome, log = run_logged_job(worker_env, tmp_path, staging, sk_model)
    succeeded = [line for line in log.splitlines() if "succeeded in" in line]
    assert len(succeeded) == 2, "the register and the webhook task"
    assert all(f"job_id={job_id}" in line for line in succeeded)
    assert any(f"event_id={outcome['event_id']}" in line for line in log.splitlines())


# ---------------------------------------------------------------------------- doctor
def run_cli(
    *args: str, env: dict[str, str], timeout_s: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``hokusai-registry`` console script, as an operator runs it."""
    return subprocess.run([SCRIPT, *args], env={**os.environ, **env}, cwd=ROOT, input=input,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


def test_doctor_passes_when_everything_is_up(worker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**worker_env, "WEBHOOK_URL": "https://marketplace.example/hooks", "WEBHOOK_SECRET": SECRET}
    with WorkerProcess(env, tmp_path):
        done = run_cli("doctor", "--json", env=env)
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    assert {name: check["status"] for name, check in checks.items()} == {
        "redis": "ok", "mlflow": "ok", "webhooks": "ok", "workers": "ok", "backlog": "ok", "outbox": "ok",
    }  # fmt: skip
    assert SECRET not in done.stdout + done.stderr


def test_doctor_says_what_is_wrong_and_how_to_fix_it(worker_env: dict[str, str]) -> None:
    env = {
        **worker_env,
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        "WEBHOOK_URL": "https://marketplace.example/hooks",
    }
    done = run_cli("doctor", env=env)
    assert done.returncode == ExitCode.NOT_OK  # unhealthy
    assert "fail  redis" in done.stdout and "hunter2" not in done.stdout + done.stderr
    assert "fix: start Redis, or set REDIS_URL" in done.stdout
    assert "fail  webhooks: WEBHOOK_SECRET is not set" in done.stdout
    assert "ok  mlflow" in done.stdout


# ---------------------------------------------------------------------------- the command against a real worker
def test_enqueue_wait_exits_ok_for_a_registered_job_and_not_ok_for_a_failed_one(
    worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    model_dir = save_model_dir(sk_model, staging)
    registered = job_fields(model_dir)
    missing_baseline = improved_fields(model_dir, baseline_id="hokusai_classification_baseline/9")  # MLflow has none
    with WorkerProcess(worker_env, tmp_path) as worker:
        done = run_cli("enqueue", "--file", "-", "--wait", "--timeout", "120", env=worker_env,
                       input=json.dumps(registered))  # fmt: skip
        assert done.returncode == ExitCode.OK, done.stderr + worker.log_tail()
        assert json.loads(done.stdout)["state"] == "SUCCESS"
        failed = run_cli("enqueue", "--file", "-", "--wait", "--timeout", "120", env=worker_env,
                         input=json.dumps(missing_baseline))  # fmt: skip
        assert failed.returncode == ExitCode.NOT_OK, failed.stderr + worker.log_tail()
        status = json.loads(failed.stdout)
        assert status["state"] == "FAILURE" and "baseline_id" in status["error"]["message"]


def test_a_replayed_dead_letter_reads_delivered_and_show_lists_every_attempt(
    worker_env: dict[str, str], staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    """The operator's path: a webhook dead-lettered by a worker, replayed from the command line."""
    with WebhookReceiver(SECRET) as receiver:
        receiver.script(500, 404)  # a retry, then rejected: dead-lettered after two attempts (410 disables instead)
        env = {**worker_env, "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true"}
        with WorkerProcess(env, tmp_path) as worker:
            job_id = enqueue_registration(job_fields(save_model_dir(sk_model, staging)))
            webhook_task = wait_result(client_app(env["REDIS_URL"]), webhook_task_id(job_id), timeout_s=90)
            assert webhook_task.state == "FAILURE", worker.log_tail()

            dead = run_cli("jobs", "status", job_id, env=env)
            assert dead.returncode == ExitCode.OK, dead.stderr
            dead_webhook = json.loads(dead.stdout)["webhook"]
            assert dead_webhook["state"] == "FAILURE"
            event_id = dead_webhook["event_id"]

            replayed = run_cli("webhooks", "replay", event_id, env=env)
            assert replayed.returncode == ExitCode.OK, replayed.stderr
            assert json.loads(replayed.stdout)["delivered"] == [event_id]

            status = run_cli("jobs", "status", job_id, env=env)
            assert status.returncode == ExitCode.OK, status.stderr
            webhook = json.loads(status.stdout)["webhook"]
            assert webhook["state"] == "SUCCESS", webhook  # the Celery task stays FAILURE: the store decides
            assert (webhook["delivery"], webhook["attempts"]) == ("delivered", 3)
            assert webhook["event_id"] == event_id and webhook["delivered_at"] is not None
            assert client_app(env["REDIS_URL"]).AsyncResult(webhook_task_id(job_id)).state == "FAILURE"  # the task's

        shown = run_cli("webhooks", "show", event_id, env=env)
    assert shown.returncode == ExitCode.OK, shown.stderr
    record = json.loads(shown.stdout)
    assert (record["state"], record["attempts"]) == ("delivered", 3)
    history = record["history"]
    assert [(a["attempt"], a["status_code"]) for a in history] == [(1, 500), (2, 404), (3, 200)]
    assert [r.status for r in receiver.requests] == [500, 404, 200]
    assert "500" in history[0]["error"] and "404" in history[1]["error"] and history[2]["error"] is None
    times = [datetime.fromisoformat(a["at"]) for a in history]
    assert all(t.utcoffset() == timedelta(0) for t in times) and times == sorted(times)
    for attempt, request in zip(history, receiver.requests, strict=True):
        assert 0 < attempt["duration_s"] < 5
        assert abs((request.received_at - datetime.fromisoformat(attempt["at"])).total_seconds()) < 1
    assert (dead_webhook["delivery"], dead_webhook["attempts"]) == ("dead", 2)  # as read before the replay


# ---------------------------------------------------------------------------- MLflow defaults of a worker
MLFLOW_PROBE = """
import importlib.util, json, os, sys
import {first}
import mlflow
from mlflow.telemetry import get_telemetry_client
from mlflow.utils.databricks_utils import is_in_databricks_runtime
print(json.dumps({{"telemetry": get_telemetry_client() is not None,
                  "run_links": os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT") != "true",
                  "remembered_absent": [n for n in ("pyspark", "dbruntime", "IPython") if n in sys.modules
                                        and sys.modules[n] is None],
                  "pyspark_spec": importlib.util.find_spec("pyspark") is not None,
                  "databricks": is_in_databricks_runtime()}}))
"""


@pytest.mark.parametrize("first", ["worker.celery_app", "json"])
def test_a_worker_runs_mlflow_without_telemetry_run_links_or_repeated_import_searches(first: str) -> None:
    ci_markers = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
                  "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ci_markers}  # MLflow skips telemetry in CI itself
    done = subprocess.run([sys.executable, "-c", MLFLOW_PROBE.format(first=first)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    worker = first == "worker.celery_app"  # `json` first: plain MLflow, which has all three
    assert seen["telemetry"] is not worker and seen["run_links"] is not worker, seen
    assert seen["remembered_absent"] == (["pyspark", "dbruntime", "IPython"] if worker else []), seen
    assert seen["pyspark_spec"] is False and seen["databricks"] is False, "MLflow's own checks still work"


# ---------------------------------------------------------------------------- demo
def test_demo_runs_the_pipeline_and_starts_its_own_redis_when_none_answers(tmp_path: Path) -> None:
    env = {"HOKUSAI_HOME": str(tmp_path / "demo-home"), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for run in (1, 2):  # running it twice works: the second run adds version 2
        done = run_cli("demo", env=env, timeout_s=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "==> Redis at redis://127.0.0.1:" in done.stderr and env["REDIS_URL"] not in done.stderr
        sections = [section.strip() for section in done.stdout.split("\n\n") if section.strip()]
        assert [section.splitlines()[0] for section in sections] == ["ModelInfo", "ModelVersion", "Webhook received"]
        info, version, webhook = (json.loads(section.split("\n", 1)[1]) for section in sections)
        assert info["model_uuid"].startswith("m-") and info["flavors"] == ["python_function", "sklearn"]
        assert str(version["version"]) == str(run)
        assert version["tags"]["model_uuid"] == info["model_uuid"]
        assert webhook["hokusai_signature_verified"] and webhook["standard_webhooks_signature_verified"]
        assert webhook["body"]["model"]["version"] == str(run)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout == "", "the demo stops what it started"


def test_demo_outside_a_checkout_says_why_it_cannot_run(tmp_path: Path) -> None:
    """As installed from a wheel: hokusai_app without the checkout's devtools/ and examples/ beside it."""
    installed = tmp_path / "site"
    shutil.copytree(ROOT / "hokusai_app", installed / "hokusai_app")
    done = subprocess.run(
        [sys.executable, "-m", "hokusai_app.cli", "demo"],
        env={**os.environ, "PYTHONPATH": str(installed), "HOKUSAI_HOME": str(tmp_path / "home")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "demo runs from a checkout of the repository" in done.stderr and "./scripts/demo.sh" in done.stderr
    assert "Traceback" not in done.stderr
