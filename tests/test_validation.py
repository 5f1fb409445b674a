"""One job validation on both sides: what the producer refuses, the worker refuses for the same reason.

Every rule that needs no MLflow is checked at enqueue (nothing is published) and again by a real
worker receiving the same job raw, as a foreign or older producer could send it. The worker adds
what only MLflow can tell: that the baseline version exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.builders import baseline_fields, improved_fields
from hokusai_registry.contract import REGISTER_TASK, REGISTRATION_QUEUE
from hokusai_registry.errors import InvalidJobError
from hokusai_registry.settings import Settings
from hokusai_registry.validation import validate_job
from producers.enqueue import enqueue_registration
from tests.queue_helpers import client_app, save_model_dir, wait_result
from tests.worker_process import WorkerProcess

#: Settings both sides share in these tests (the worker gets them as environment variables).
SHARED_ENV = {"MAX_METADATA_BYTES": "2000"}

#: rule -> (fields for a model folder ``d`` holding an MLmodel, the field named, words of the reason)
RULES: dict[str, tuple[Callable[[Path], dict[str, Any]], str, str]] = {
    "scheme not allowed": (lambda d: baseline_fields("gopher://host/model"), "artifact_uri", "scheme 'gopher'"),
    "'..' segment": (lambda d: baseline_fields(f"{d}/../{d.name}"), "artifact_uri", "'..'"),
    "outside the roots": (lambda d: baseline_fields("/etc/hokusai-model"), "artifact_uri", "outside the allowed roots"),
    "relative path": (lambda d: baseline_fields("staging/model"), "artifact_uri", "must be an absolute path"),
    "no such folder": (lambda d: baseline_fields(d.parent / "absent"), "artifact_uri", "not a folder"),
    "no MLmodel": (lambda d: baseline_fields(d / "sub"), "artifact_uri", "holds no MLmodel"),
    "baseline id pattern": (lambda d: improved_fields(d, baseline_id="my_model/1"), "baseline_id", "_baseline/"),
    "model type vs baseline": (
        lambda d: improved_fields(d, model_type="regression"),
        "model_type",
        "does not match baseline_id",
    ),
    "metadata over the cap": (
        lambda d: baseline_fields(d, metadata={"blob": "x" * 3000}),
        "metadata",
        "the limit is 2000",
    ),
    "metric name": (lambda d: improved_fields(d, delta_metrics={"auc/": 0.1}), "delta_metrics", "['auc/']"),
}


@pytest.fixture
def model_dir(staging: Path) -> Path:
    """A folder that passes the artifact rules: under the staging root, with an MLmodel file."""
    folder = staging / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    return folder


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_producer_refuses_at_enqueue_naming_the_field(
    rule: str, model_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SHARED_ENV.items():
        monkeypatch.setenv(key, value)
    build, field, reason = RULES[rule]
    with pytest.raises(InvalidJobError) as refused:
        enqueue_registration(build(model_dir), settings=Settings())
    assert f"{field}: " in str(refused.value) and reason in str(refused.value), str(refused.value)
    assert redis.Redis.from_url(redis_url).llen(REGISTRATION_QUEUE) == 0, "a refused job was published"


def test_the_valid_builders_pass_and_a_custom_baseline_name_is_accepted(model_dir: Path) -> None:
    settings = Settings(**{k.lower(): v for k, v in SHARED_ENV.items()})
    assert validate_job(baseline_fields(model_dir), settings).kind == "baseline"
    job = validate_job(improved_fields(model_dir, baseline_id="custom_model_baseline/1"), settings)
    assert job.baseline_id == "custom_model_baseline/1"


def test_the_worker_refuses_the_same_jobs_sent_raw_for_the_same_reasons(
    worker_env: dict[str, str], redis_url: str, model_dir: Path, tmp_path: Path
) -> None:
    app = client_app(redis_url)
    sent = {}
    with WorkerProcess({**worker_env, **SHARED_ENV}, tmp_path) as worker:
        for rule, (build, field, reason) in RULES.items():
            job_id = str(uuid.uuid4())
            app.send_task(
                REGISTER_TASK, args=[{"job_id": job_id, **build(model_dir)}], task_id=job_id, queue=REGISTRATION_QUEUE
            )
            sent[rule] = (job_id, field, reason)
        for rule, (job_id, field, reason) in sent.items():
            result = wait_result(app, job_id)
            assert result.state == "FAILURE", f"{rule}: {worker.log_tail()}"
            assert f"{field}: " in str(result.result) and reason in str(result.result), f"{rule}: {result.result!r}"


def test_an_improved_job_on_a_missing_baseline_fails_permanently_in_the_worker(
    worker_env: dict[str, str], redis_url: str, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    model = save_model_dir(sk_model, staging)
    app = client_app(redis_url)
    with WorkerProcess(worker_env, tmp_path) as worker:
        baseline_id = enqueue_registration(baseline_fields(model))
        assert wait_result(app, baseline_id).state == "SUCCESS", worker.log_tail()
        good = enqueue_registration(improved_fields(model))  # hokusai_classification_baseline/1 now exists
        missing = enqueue_registration(improved_fields(model, baseline_id="hokusai_classification_baseline/9"))
        assert wait_result(app, good).result["model_name"] == "hokusai_classification_improved"
        failed = wait_result(app, missing)
        log = worker.log_text()
    assert failed.state == "FAILURE"
    assert "baseline_id: hokusai_classification_baseline/9 does not exist in MLflow" in str(failed.result)
    assert "retrying in" not in log, "a missing baseline is permanent, not retried"


def test_metadata_values_json_cannot_hold_are_converted_at_enqueue_as_in_the_registry(
    model_dir: Path, redis_url: str
) -> None:
    import datetime as dt
    from decimal import Decimal

    import numpy as np

    from worker.registration.model_inputs import check_metadata

    metadata = {
        "rows": np.int64(120_000),
        "auc": np.float32(0.5),
        "weights": np.array([1, 2]),
        "trained_at": dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.UTC),
        "day": dt.date(2026, 11, 27),
        "price": Decimal("1.10"),
        "path": Path("/data/x.csv"),
        "labels": {"b", "a"},
    }
    expected = {
        "rows": 120000,
        "auc": 0.5,
        "weights": [1, 2],
        "trained_at": "2026-11-27T09:30:00+00:00",
        "day": "2026-11-27",
        "price": "1.10",
        "path": "/data/x.csv",
        "labels": ["a", "b"],
    }
    settings = Settings()
    assert validate_job(baseline_fields(model_dir, metadata=metadata), settings).metadata == expected
    assert check_metadata(metadata, settings.max_metadata_bytes) == expected  # the in-process registry agrees
    with pytest.raises(InvalidJobError, match=r"metadata: metadata\['when'\] is a builtins.object"):
        validate_job(baseline_fields(model_dir, metadata={"when": object()}), settings)
