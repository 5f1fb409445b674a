"""The producer side against real Redis (and real MLflow for save_and_enqueue); no mocks, no eager mode."""

from __future__ import annotations

import base64
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from devtools.builders import baseline_fields
from hokusai_registry.contract import (
    REGISTER_TASK,
    REGISTRATION_QUEUE,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    RegistrationJob,
)
from hokusai_registry.errors import (
    ArtifactRejectedError,
    BrokerUnavailableError,
    ConfigurationError,
    InvalidInputError,
    InvalidJobError,
    RetryableError,
)
from hokusai_registry.redaction import redact_url as core_redact_url
from hokusai_registry.settings import Settings, get_settings
from producers import enqueue_registration, job_status, save_and_enqueue, wait_for_job
from producers.broker import CONNECT_TIMEOUT_S, redact_url
from producers.enqueue import JobTimeoutError, webhook_task_id
from tests.support import staged_model

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("staged_models_allowed")
MODEL = staged_model("model")
REFUSED = staged_model("refused")


def job_fields(**changes: Any) -> dict[str, Any]:
    """devtools.builders' baseline job on the stand-in model folder."""
    return baseline_fields(MODEL, **changes)


def queued_messages(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The kombu messages waiting in ``queue`` (oldest first), body decoded from base64 JSON."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for item in reversed(raw):  # kombu LPUSHes; consumers BRPOP
        message = json.loads(item)
        assert message["properties"]["body_encoding"] == "base64"
        message["decoded_body"] = json.loads(base64.b64decode(message["body"]))
        messages.append(message)
    return messages


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ import hygiene
def test_import_producers_loads_neither_mlflow_nor_worker() -> None:
    code = (
        "import json, sys\n"
        "import producers\n"
        "assert callable(producers.enqueue_registration) and callable(producers.job_status)\n"
        "assert callable(producers.wait_for_job) and callable(producers.save_and_enqueue)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'mlflow', 'worker', 'sklearn'})\n"
        "print(json.dumps(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_unknown_attribute_of_producers() -> None:
    import producers

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        producers.nope  # noqa: B018


# ------------------------------------------------------------------ enqueue
def test_enqueue_publishes_a_json_message_on_the_registrations_queue(redis_url: str) -> None:
    job = RegistrationJob.model_validate(job_fields(token_id="LEAD-1"))

    job_id = enqueue_registration(job)

    assert job_id == str(job.job_id)
    [message] = queued_messages(redis_url, REGISTRATION_QUEUE)
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == REGISTER_TASK
    assert message["headers"]["id"] == job_id
    assert message["properties"]["delivery_info"]["routing_key"] == REGISTRATION_QUEUE
    args, kwargs, embed = message["decoded_body"]
    assert args == [job.model_dump(mode="json")]
    assert args[0]["token_id"] == "lead-1"
    assert kwargs == {}
    [link] = embed["chain"]
    assert link["task"] == WEBHOOK_TASK
    assert link["options"]["queue"] == WEBHOOK_QUEUE
    assert link["options"]["task_id"] == webhook_task_id(job_id)
    assert link["args"] == [] and link["kwargs"] == {}
    assert queued_messages(redis_url, WEBHOOK_QUEUE) == []


def test_enqueue_accepts_plain_fields_and_keeps_a_given_job_id(redis_url: str) -> None:
    given = "6f1c1a0e-3c3b-4a5e-9d39-2f9f5b1f0c11"
    assert enqueue_registration(job_fields(job_id=given)) == given
    [message] = queued_messages(redis_url, REGISTRATION_QUEUE)
    assert message["decoded_body"][0][0]["job_id"] == given


def test_enqueue_generates_a_job_id(redis_url: str) -> None:
    first, second = enqueue_registration(job_fields()), enqueue_registration(job_fields())
    assert first != second
    assert [m["headers"]["id"] for m in queued_messages(redis_url, REGISTRATION_QUEUE)] == [first, second]


def test_invalid_job_names_the_field_and_publishes_nothing(redis_url: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        enqueue_registration(job_fields(model_type="vision", extra_field=1))
    message = str(caught.value)
    assert message.startswith("invalid registration job: model_type: Input should be 'lead_scoring'")
    assert "(got 'vision')" in message
    assert "extra_field: Extra inputs are not permitted" in message
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.close()


def test_redis_down_is_retried_then_broker_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    # HOKUSAI_OUTBOX=false: the caller gets the error instead of an outbox file (tests/test_outbox.py)
    settings = Settings(redis_url=f"redis://:s3cret@127.0.0.1:{port}/0", enqueue_retry_s=1.0, hokusai_outbox=False)
    caplog.set_level(logging.WARNING, logger="producers.broker")
    started = time.monotonic()

    with pytest.raises(BrokerUnavailableError) as caught:
        enqueue_registration(job_fields(), settings=settings)

    elapsed = time.monotonic() - started
    # The budget bounds when the last attempt may start; one connect attempt may follow it.
    assert elapsed < 1.0 + CONNECT_TIMEOUT_S + 2.0, f"gave up after {elapsed:.1f}s; the budget is 1s"
    message = str(caught.value)
    assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable while enqueueing job" in message
    assert "s3cret" not in message
    assert isinstance(caught.value, RetryableError)
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


def test_no_retry_budget_means_one_attempt(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0", enqueue_retry_s=0, hokusai_outbox=False)
    caplog.set_level(logging.WARNING, logger="producers.broker")
    with pytest.raises(BrokerUnavailableError):
        enqueue_registration(job_fields(), settings=settings)
    assert [r for r in caplog.records if "retrying in" in r.getMessage()] == []


def test_wrong_password_is_a_configuration_error_not_retried(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url.replace("redis://", "redis://nobody:wrong@"), enqueue_retry_s=20.0)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        enqueue_registration(job_fields(), settings=settings)
    assert time.monotonic() - started < 10.0  # far below the 20 s retry budget: not retried
    assert "refused the credentials" in str(caught.value) and "wrong" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@host:6379/1", "redis://host:6379/1"),
        ("rediss://user:pw@host/2", "rediss://host/2"),
        ("redis://host/0?password=pw&ssl_cert_reqs=none", "redis://host/0"),
        ("https://user:token@hooks.example/in?sig=abc#x", "https://hooks.example/in"),
        ("sqlite:////tmp/store/mlflow.db", "sqlite:////tmp/store/mlflow.db"),
        ("/srv/models/m?x=1", "/srv/models/m"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """The producer uses the one redaction rule of core (no copy of its own)."""
    assert redact_url(url) == shown
    assert redact_url is core_redact_url


# ------------------------------------------------------------------ status and waiting
def test_status_of_a_queued_job_is_pending(redis_url: str) -> None:
    job_id = enqueue_registration(job_fields())
    assert job_status(job_id) == {
        "job_id": job_id,
        "state": "PENDING",
        "result": None,
        "error": None,
        "date_done": None,
        "webhook": {"task_id": webhook_task_id(job_id), "state": "PENDING"},
    }


def test_status_needs_a_uuid(redis_url: str) -> None:
    with pytest.raises(InvalidInputError, match="job_id must be a UUID, got 'job-1'"):
        job_status("job-1")


def test_wait_for_job_times_out_with_the_last_state(redis_url: str) -> None:
    job_id = enqueue_registration(job_fields())
    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match=rf"job {job_id} did not finish within 0.3s \(last state: PENDING\)"):
        wait_for_job(job_id, 0.3)
    assert 0.3 <= time.monotonic() - started < 5.0


def test_worker_receives_the_job_and_chains_the_webhook(stand_in_worker: Celery) -> None:
    job_id = enqueue_registration(job_fields())

    status = wait_for_job(job_id, timeout_s=30)

    assert status["state"] == "SUCCESS"
    assert status["result"] == {"job_id": job_id, "model_id": "hokusai_classification_baseline/1"}
    assert status["error"] is None and status["date_done"]
    webhook = AsyncResult(webhook_task_id(job_id), app=stand_in_worker).get(timeout=30)
    assert webhook == {"delivered": True, "model_id": "hokusai_classification_baseline/1"}
    assert job_status(job_id)["webhook"] == {"task_id": webhook_task_id(job_id), "state": "SUCCESS"}


def test_failed_job_reports_its_error_and_skips_the_webhook(stand_in_worker: Celery, redis_url: str) -> None:
    job_id = enqueue_registration(job_fields(metadata={"refuse": True}))

    status = wait_for_job(job_id, timeout_s=30)

    assert status["state"] == "FAILURE"
    assert status["result"] is None
    assert status["error"] == {"type": "InvalidJobError", "message": "artifact_uri: the stand-in refuses this model"}
    # Celery marks the rest of a failed chain FAILURE too; the webhook task is never published.
    assert status["webhook"]["state"] == "FAILURE"
    assert queued_messages(redis_url, WEBHOOK_QUEUE) == []


# ------------------------------------------------------------------ save_and_enqueue
def test_save_and_enqueue_saves_an_mlflow_model_under_staging(
    redis_url: str, sk_model: Any, example_records: list[dict[str, float]]
) -> None:
    job_id = save_and_enqueue(sk_model, {"kind": "baseline", "model_type": "classification"})

    folder = get_settings().staging_dir / job_id
    assert (folder / "MLmodel").is_file()
    requirements = (folder / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements
    assert [p.name for p in folder.parent.iterdir()] == [job_id]  # no scratch folder left behind
    [message] = queued_messages(redis_url, REGISTRATION_QUEUE)
    assert message["headers"]["id"] == job_id
    assert message["decoded_body"][0][0]["artifact_uri"] == str(folder)
    import pandas as pd

    predictions = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame(example_records))
    assert len(predictions) == 2


class _Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context: Any, model_input: list[float], params: dict[str, Any] | None = None) -> list[float]:
        return [value * 2 for value in model_input]


def test_save_and_enqueue_a_python_model_with_explicit_requirements(redis_url: str, tmp_path: Path) -> None:
    staging = tmp_path / "my-staging"
    fields = {"kind": "baseline", "model_type": "regression", "job_id": "6f1c1a0e-3c3b-4a5e-9d39-2f9f5b1f0c11"}
    with pytest.raises(ArtifactRejectedError, match="outside the allowed roots"):  # not on the workers' list
        save_and_enqueue(_Doubler(), fields, staging_dir=staging)
    assert not staging.exists(), "a refused job saved its model"
    settings = Settings(allowed_artifact_roots=str(staging))
    job_id = save_and_enqueue(
        _Doubler(), fields, settings=settings, staging_dir=staging, pip_requirements=["cloudpickle>=3", "pandas"]
    )
    folder = staging / job_id
    assert job_id == "6f1c1a0e-3c3b-4a5e-9d39-2f9f5b1f0c11"
    assert "python_function" in (folder / "MLmodel").read_text()
    requirements = (folder / "requirements.txt").read_text().splitlines()
    assert "cloudpickle>=3" in requirements and "pandas" in requirements
    assert mlflow.pyfunc.load_model(str(folder)).predict([1.0, 2.0]) == [2.0, 4.0]
    [message] = queued_messages(redis_url, REGISTRATION_QUEUE)
    assert message["decoded_body"][0][0]["artifact_uri"] == str(folder)


def test_save_and_enqueue_rejects_a_bad_job_before_saving(redis_url: str, sk_model: Any) -> None:
    with pytest.raises(InvalidJobError, match="contributor"):
        save_and_enqueue(sk_model, {"kind": "baseline", "model_type": "classification", "contributor": "0x1"})
    with pytest.raises(InvalidJobError, match="artifact_uri: is set by save_and_enqueue"):
        save_and_enqueue(sk_model, {"kind": "baseline", "model_type": "classification", "artifact_uri": "/x"})
    assert not get_settings().staging_dir.exists()
    assert queued_messages(redis_url, REGISTRATION_QUEUE) == []


def test_save_and_enqueue_refuses_a_job_id_already_staged(redis_url: str, sk_model: Any) -> None:
    fields = {"kind": "baseline", "model_type": "classification", "job_id": "6f1c1a0e-3c3b-4a5e-9d39-2f9f5b1f0c11"}
    save_and_enqueue(sk_model, fields)
    with pytest.raises(InvalidJobError, match="job_id: 6f1c1a0e-3c3b-4a5e-9d39-2f9f5b1f0c11 is already staged"):
        save_and_enqueue(sk_model, fields)
    assert len(queued_messages(redis_url, REGISTRATION_QUEUE)) == 1


def test_save_and_enqueue_rejects_an_unsupported_model(redis_url: str) -> None:
    with pytest.raises(InvalidInputError, match=r"must be an mlflow\.pyfunc\.PythonModel or a scikit-learn"):
        save_and_enqueue(object(), {"kind": "baseline", "model_type": "classification"})
    assert not get_settings().staging_dir.exists()


def test_save_and_enqueue_without_mlflow_says_so() -> None:
    code = (
        "import sys\n"
        "sys.modules['mlflow'] = None  # as if mlflow were not installed\n"
        "from hokusai_registry.errors import ConfigurationError\n"
        "from producers import save_and_enqueue\n"
        "try:\n"
        "    save_and_enqueue(object(), {'kind': 'baseline', 'model_type': 'regression'})\n"
        "except ConfigurationError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("save_and_enqueue needs mlflow to save the model: pip install mlflow")


def test_save_and_enqueue_prunes_the_staging_folder_of_registered_jobs(
    stand_in_worker: Celery, redis_url: str, sk_model: Any
) -> None:
    """Pipeline hosts whose workers do not share their disk: the producer removes registered jobs' folders."""
    fields = {"kind": "baseline", "model_type": "classification"}
    first = save_and_enqueue(sk_model, fields)
    assert wait_for_job(first, timeout_s=30)["state"] == "SUCCESS"  # the stand-in removes nothing
    staging = get_settings().staging_dir
    assert (staging / first).is_dir()

    second = save_and_enqueue(sk_model, fields)

    assert sorted(p.name for p in staging.iterdir()) == [second], "a registered job's folder is left behind"


def test_redis_down_spools_after_the_same_retries(caplog: pytest.LogCaptureFixture) -> None:
    """The default: the same bounded retries, then the job goes to the outbox instead of the error."""
    port = closed_port()
    settings = Settings(redis_url=f"redis://:s3cret@127.0.0.1:{port}/0", enqueue_retry_s=1.0)
    caplog.set_level(logging.WARNING)
    started = time.monotonic()

    job_id = enqueue_registration(job_fields(), settings=settings)

    assert time.monotonic() - started < 1.0 + CONNECT_TIMEOUT_S + 2.0  # the same budget as without the outbox
    assert len([r for r in caplog.records if "retrying in" in r.getMessage()]) >= 2
    assert (settings.outbox_dir / f"{job_id}.json").is_file()
    assert job_status(job_id, settings)["state"] == "SPOOLED"
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


def test_save_and_enqueue_with_redis_down_spools_and_keeps_the_model(
    sk_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("ENQUEUE_RETRY_S", "0")
    get_settings.cache_clear()
    job_id = save_and_enqueue(sk_model, {"kind": "baseline", "model_type": "classification"})
    settings = get_settings()
    spooled = json.loads((settings.outbox_dir / f"{job_id}.json").read_text())
    assert spooled["job"]["artifact_uri"] == str(settings.staging_dir / job_id)
    assert (settings.staging_dir / job_id / "MLmodel").is_file()


def test_save_and_enqueue_with_the_outbox_off_raises_naming_the_folder(
    sk_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("ENQUEUE_RETRY_S", "0")
    monkeypatch.setenv("HOKUSAI_OUTBOX", "false")
    get_settings.cache_clear()
    with pytest.raises(BrokerUnavailableError, match=r"the model is saved at .*: enqueue it again with job_id"):
        save_and_enqueue(sk_model, {"kind": "baseline", "model_type": "classification"})
    assert not get_settings().outbox_dir.exists()
