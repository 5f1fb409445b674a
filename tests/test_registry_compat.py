"""The pre-upgrade ``HokusaiModelRegistry`` surface, written down as tests of the new class.

Method by method, from the old class (hokusai-data-pipeline ``src/services/model_registry.py``)
and its callers (``src/api/routes/models.py``): every key the old one returned, with the same
JSON type, and the same exception class for the same bad input. Real MLflow sqlite stores.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic_core import to_jsonable_python

from devtools.devstack import free_port
from hokusai_registry.settings import Settings
from tests.queue_helpers import job_fields, save_model_dir
from worker.registration.registry import HokusaiModelRegistry

CONTRIBUTOR = "0x" + "aB" * 20  # EIP-55-style mixed case, as the old class kept it
OTHER = "0x" + "12" * 20


def _iso_utc(text: Any) -> datetime:
    assert isinstance(text, str)
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None and moment.utcoffset() == UTC.utcoffset(None)
    return moment


def _assert_utc_datetime(value: Any) -> None:
    """A timezone-aware UTC ``datetime``, as the old pandas Timestamp was (a ``datetime`` subclass)."""
    assert isinstance(value, datetime)
    assert value.tzinfo is not None and value.utcoffset() == UTC.utcoffset(None)
    assert _iso_utc(value.isoformat()) == value


def _assert_encodable_the_old_ways(item: dict[str, Any]) -> None:
    """The old API's encoders: FastAPI's (pydantic's jsonable form: ISO 8601) and ``json.dumps(default=...)``."""
    created = item["created_at"]
    assert to_jsonable_python(item)["created_at"].replace("Z", "+00:00") == created.isoformat()
    assert json.loads(json.dumps(item, default=str))["created_at"] == str(created)
    assert json.loads(json.dumps(item, default=lambda value: value.isoformat()))["created_at"] == created.isoformat()


# ------------------------------------------------------------------ class surface
def test_valid_model_types_is_the_old_list() -> None:
    assert HokusaiModelRegistry.VALID_MODEL_TYPES == ["lead_scoring", "classification", "regression", "ranking"]
    assert isinstance(HokusaiModelRegistry.VALID_MODEL_TYPES, list)


def test_old_call_signatures_are_accepted() -> None:
    """Every public method of the old class exists and takes the old parameter names, in order."""
    old = {
        "__init__": ["tracking_uri"],
        "register_baseline": ["model", "model_type", "metadata"],
        "register_improved_model": ["model", "baseline_id", "delta_metrics", "contributor"],
        "get_model_lineage": ["model_id"],
        "get_contributor_models": ["contributor_address"],
        "promote_model_to_production": ["model_name", "version"],
        "get_production_models": [],
    }
    for name, params in old.items():
        signature = inspect.signature(getattr(HokusaiModelRegistry, name))
        positional = [p.name for p in signature.parameters.values() if p.name != "self"][: len(params)]
        assert positional == params, name


def test_tracking_uri_attribute(registry: HokusaiModelRegistry, tracking_uri: str) -> None:
    assert registry.tracking_uri == tracking_uri


# ------------------------------------------------------------------ register_baseline
def test_register_baseline_old_keys_types_and_run_params(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    result = registry.register_baseline(
        model=sk_model, model_type="lead_scoring", metadata={"dataset": "q3", "rows": 1200, "long": "x" * 300}
    )
    assert isinstance(result["model_id"], str) and result["model_id"] == f"{result['model_name']}/{result['version']}"
    assert result["model_name"] == "hokusai_lead_scoring_baseline"
    assert isinstance(result["version"], str) and result["version"] == "1"
    assert (result["model_type"], result["is_baseline"]) == ("lead_scoring", True)
    assert isinstance(result["run_id"], str) and result["run_id"]
    _iso_utc(result["registration_timestamp"])
    json.dumps(result)  # the whole result is JSON

    # The old run params, findable the old way.
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="params.model_type = 'lead_scoring'")
    assert list(runs["run_id"]) == [result["run_id"]]
    params = MlflowClient(tracking_uri).get_run(result["run_id"]).data.params
    assert {k: params[k] for k in ("model_type", "is_baseline", "metadata_dataset", "metadata_rows")} == {
        "model_type": "lead_scoring",
        "is_baseline": "True",
        "metadata_dataset": "q3",
        "metadata_rows": "1200",
    }
    _iso_utc(params["registration_time"])
    assert "metadata_long" not in params  # over the param limit: metadata only
    assert result["metadata"]["long"] == "x" * 300


def test_register_baseline_bad_input_raises_value_error(registry: HokusaiModelRegistry, sk_model: Any) -> None:
    with pytest.raises(ValueError):
        registry.register_baseline(None, "lead_scoring", {})
    with pytest.raises(ValueError):
        registry.register_baseline(sk_model, "fraud", {})


# ------------------------------------------------------------------ register_improved_model
def test_register_improved_model_old_keys_types_and_run_params(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    baseline = registry.register_baseline(sk_model, "classification", {})
    deltas = {"accuracy_improvement": 0.02, "auc_improvement": 0.01}
    result = registry.register_improved_model(
        model=sk_model, baseline_id=baseline["model_id"], delta_metrics=deltas, contributor=CONTRIBUTOR
    )
    assert (result["model_name"], result["version"]) == ("hokusai_classification_improved", "1")
    assert result["model_id"] == "hokusai_classification_improved/1"
    assert (result["baseline_id"], result["contributor"], result["delta_metrics"]) == (
        "hokusai_classification_baseline/1",
        CONTRIBUTOR,
        deltas,
    )
    assert isinstance(result["run_id"], str)
    _iso_utc(result["registration_timestamp"])
    run = MlflowClient(tracking_uri).get_run(result["run_id"])
    assert run.data.metrics == deltas
    assert {k: run.data.params[k] for k in ("baseline_model_id", "contributor_address", "improvement_count")} == {
        "baseline_model_id": "hokusai_classification_baseline/1",
        "contributor_address": CONTRIBUTOR,  # as given, as the old class logged it
        "improvement_count": "2",
    }
    found = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"params.contributor_address = '{CONTRIBUTOR}'"
    )
    assert list(found["run_id"]) == [result["run_id"]]


def test_register_improved_model_invalid_address_raises_value_error(
    registry: HokusaiModelRegistry, sk_model: Any
) -> None:
    for bad in ("0x123", "", "ab" * 21):
        with pytest.raises(ValueError, match="contributor"):
            registry.register_improved_model(sk_model, "hokusai_ranking_baseline/1", {}, bad)


def _custom_baseline(tracking_uri: str, source_result: dict[str, Any], *, tags: dict[str, str]) -> str:
    client = MlflowClient(tracking_uri)
    client.create_registered_model("custom_model_baseline")
    version = client.create_model_version(
        "custom_model_baseline", source_result["model_uri"], run_id=source_result["run_id"], tags=tags
    )
    return f"custom_model_baseline/{version.version}"


def test_any_baseline_name_registers_improvements_as_stem_improved(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    """``custom_model_baseline/1`` -> ``custom_model_improved``, as the old class did; type from the tag."""
    source = registry.register_baseline(sk_model, "regression", {})
    baseline_id = _custom_baseline(tracking_uri, source, tags={"model_type": "regression"})
    assert baseline_id == "custom_model_baseline/1"
    result = registry.register_improved_model(sk_model, baseline_id, {"rmse_improvement": 0.3}, CONTRIBUTOR)
    assert (result["model_name"], result["model_id"], result["model_type"]) == (
        "custom_model_improved",
        "custom_model_improved/1",
        "regression",
    )
    lineage = registry.get_model_lineage("custom_model_improved")
    assert [(e["baseline_id"], e["contributor"]) for e in lineage] == [(baseline_id, CONTRIBUTOR.lower())]


def test_a_baseline_without_a_type_tag_takes_its_runs_model_type_param(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    source = registry.register_baseline(sk_model, "ranking", {})  # its run has params.model_type = ranking
    baseline_id = _custom_baseline(tracking_uri, source, tags={})
    result = registry.register_improved_model(sk_model, baseline_id, {}, CONTRIBUTOR)
    assert (result["model_name"], result["model_type"]) == ("custom_model_improved", "ranking")


def test_a_baseline_whose_type_cannot_be_told_is_refused_naming_it(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any, tmp_path: Path
) -> None:
    client = MlflowClient(tracking_uri)
    client.create_registered_model("mystery_baseline")
    client.create_model_version("mystery_baseline", str(save_model_dir(sk_model, tmp_path)))  # no run, no tag
    with pytest.raises(ValueError, match=r"mystery_baseline/1: cannot tell its model type"):
        registry.register_improved_model(sk_model, "mystery_baseline/1", {}, CONTRIBUTOR)
    assert client.search_registered_models("name = 'mystery_improved'") == []


# ------------------------------------------------------------------ get_model_lineage
def test_get_model_lineage_old_keys_metrics_and_cumulative_improvement(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    client = MlflowClient(tracking_uri)
    baseline = registry.register_baseline(sk_model, "classification", {})
    client.log_metric(baseline["run_id"], "accuracy", 0.80)
    client.log_metric(baseline["run_id"], "auc", 0.70)
    one = registry.register_improved_model(sk_model, baseline["model_id"], {"accuracy_improvement": 0.02}, CONTRIBUTOR)
    two = registry.register_improved_model(
        sk_model, baseline["model_id"], {"accuracy_improvement": 0.03, "auc_improvement": -0.01}, OTHER
    )

    lineage = registry.get_model_lineage(model_id="hokusai_classification_improved")
    assert [e["version"] for e in lineage] == ["1", "2"]
    for entry, result in zip(lineage, (one, two), strict=True):
        assert entry["run_id"] == result["run_id"]
        assert isinstance(entry["created_at"], int) and entry["created_at"] > 1_600_000_000_000
        assert entry["is_baseline"] is False
        assert entry["baseline_id"] == baseline["model_id"]
        assert entry["metrics"] == result["delta_metrics"]
    assert [e["contributor"] for e in lineage] == [CONTRIBUTOR.lower(), OTHER]
    assert "cumulative_improvement" not in lineage[0]
    cumulative = lineage[-1]["cumulative_improvement"]
    assert cumulative["accuracy"] == pytest.approx(0.05)
    assert "auc" not in cumulative  # a net loss is not an improvement
    assert cumulative["total_improvements"] == 2
    json.dumps(lineage)

    baselines = registry.get_model_lineage("hokusai_classification_baseline")
    assert [(e["version"], e["is_baseline"], e["metrics"]) for e in baselines] == [
        ("1", True, {"accuracy": 0.80, "auc": 0.70})
    ]
    assert "cumulative_improvement" not in baselines[0]


def test_get_model_lineage_of_an_unknown_model_raises_value_error(registry: HokusaiModelRegistry) -> None:
    with pytest.raises(ValueError, match="Model hokusai_ranking_improved not found"):
        registry.get_model_lineage("hokusai_ranking_improved")


# ------------------------------------------------------------------ get_contributor_models
def test_get_contributor_models_old_keys_any_case(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    baseline = registry.register_baseline(sk_model, "ranking", {})
    mine = registry.register_improved_model(sk_model, baseline["model_id"], {"ndcg_improvement": 0.1}, CONTRIBUTOR)
    registry.register_improved_model(sk_model, baseline["model_id"], {}, OTHER)
    for asked in (CONTRIBUTOR, CONTRIBUTOR.lower(), "0x" + CONTRIBUTOR[2:].upper()):
        found = registry.get_contributor_models(contributor_address=asked)
        assert len(found) == 1
        item = found[0]
        assert item["contributor_address"] == asked
        assert (item["run_id"], item["model_name"], item["baseline_id"]) == (
            mine["run_id"],
            "hokusai_ranking_improved",
            baseline["model_id"],
        )
        assert item["metrics"] == {"ndcg_improvement": 0.1}
        _assert_utc_datetime(item["created_at"])
        _assert_encodable_the_old_ways(item)


def test_get_contributor_models_invalid_address_is_an_empty_list(registry: HokusaiModelRegistry) -> None:
    for bad in ("0x123", "", "not an address", None, "0x' OR 1=1 --"):
        assert registry.get_contributor_models(bad) == []  # type: ignore[arg-type]


# ------------------------------------------------------------------ promotion
def test_promote_model_to_production_old_keys_and_lifecycle_tag(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    first = registry.register_baseline(sk_model, "regression", {})
    second = registry.register_baseline(sk_model, "regression", {})
    promoted = registry.promote_model_to_production(first["model_name"], first["version"])
    assert {k: promoted[k] for k in ("model_id", "version", "stage")} == {
        "model_id": "hokusai_regression_baseline",
        "version": "1",
        "stage": "Production",
    }
    _iso_utc(promoted["timestamp"])
    client = MlflowClient(tracking_uri)
    assert client.get_model_version(first["model_name"], "1").tags["lifecycle_stage"] == "Production"

    registry.promote_model_to_production(second["model_name"], second["version"])
    assert client.get_model_version(first["model_name"], "1").tags["lifecycle_stage"] == "Archived"
    assert client.get_model_version(first["model_name"], "2").tags["lifecycle_stage"] == "Production"
    assert str(client.get_model_version_by_alias(first["model_name"], "production").version) == "2"


def test_promoting_a_missing_model_raises_mlflow_exception_and_changes_nothing(
    registry: HokusaiModelRegistry, sk_model: Any
) -> None:
    with pytest.raises(MlflowException):
        registry.promote_model_to_production("hokusai_ranking_baseline", "1")
    result = registry.register_baseline(sk_model, "ranking", {})
    with pytest.raises(MlflowException):
        registry.promote_model_to_production(result["model_name"], "7")
    assert registry.get_production_models() == []


def test_get_production_models(registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any) -> None:
    assert registry.get_production_models() == []
    baseline = registry.register_baseline(sk_model, "ranking", {})
    registry.register_baseline(sk_model, "ranking", {})
    registry.register_baseline(sk_model, "classification", {})  # never promoted
    MlflowClient(tracking_uri).set_registered_model_tag(baseline["model_name"], "team", "growth")
    registry.promote_model_to_production(baseline["model_name"], 2)
    production = registry.get_production_models()
    assert production == [
        {
            "model_name": "hokusai_ranking_baseline",
            "version": "2",
            "stage": "Production",
            "alias": "production",
            "description": production[0]["description"],
            "tags": {"team": "growth"},
        }
    ]
    assert production[0]["description"] in (None, "")


def test_get_production_models_on_an_unreachable_server_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = HokusaiModelRegistry(f"http://127.0.0.1:{free_port()}")
    assert registry.get_production_models() == []


# ------------------------------------------------------------------ metadata conversion
def test_metadata_values_json_cannot_hold_are_converted_faithfully(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    metadata = {
        "rows": np.int64(1200),
        "score": np.float32(0.5),
        "ok": np.bool_(True),
        "weights": np.array([[1, 2], [3, 4]]),
        "trained_at": datetime(2026, 11, 1, 12, 30, tzinfo=UTC),
        "naive_at": datetime(2026, 11, 1, 12, 30),
        "day": date(2026, 11, 1),
        "price": Decimal("1.10"),
        "path": Path("/data/leads.csv"),
        "labels": {"b", "a"},
        "nested": {"when": [np.datetime64("2026-11-01")], 3: "int key"},
    }
    expected = {
        "rows": 1200,
        "score": 0.5,
        "ok": True,
        "weights": [[1, 2], [3, 4]],
        "trained_at": "2026-11-01T12:30:00+00:00",
        "naive_at": "2026-11-01T12:30:00",
        "day": "2026-11-01",
        "price": "1.10",
        "path": "/data/leads.csv",
        "labels": ["a", "b"],
        "nested": {"when": ["2026-11-01"], "3": "int key"},
    }
    result = registry.register_baseline(sk_model, "classification", metadata)
    assert result["metadata"] == expected
    assert registry.get_model_by_uuid(result["model_uuid"])["metadata"] == expected
    params = MlflowClient(tracking_uri).get_run(result["run_id"]).data.params
    assert (params["metadata_rows"], params["metadata_price"], params["metadata_ok"]) == ("1200", "1.10", "True")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), "metadata['bad'] is a builtins.object"),
        ({"deep": [1, b"bytes"]}, "metadata['bad']['deep'][1] is a builtins.bytes"),
        (np.float64("nan"), "metadata['bad'] is nan"),
        (Decimal("Infinity"), "metadata['bad'] is Decimal('Infinity')"),
    ],
)
def test_metadata_that_cannot_be_converted_names_the_key(
    registry: HokusaiModelRegistry, sk_model: Any, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        registry.register_baseline(sk_model, "classification", {"bad": value})
    assert MlflowClient(registry.tracking_uri).search_registered_models() == []


# ------------------------------------------------------------------ settings
def test_mlflow_server_url_is_a_fallback_of_mlflow_tracking_uri(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_uri = f"sqlite:///{tmp_path / 'old.db'}"
    monkeypatch.setenv("MLFLOW_SERVER_URL", old_uri)
    settings = Settings()
    assert (settings.tracking_uri, settings.tracking_uri_source) == (old_uri, "MLFLOW_SERVER_URL")
    with caplog.at_level(logging.INFO, logger="worker.registration.registry"):
        assert HokusaiModelRegistry(settings=settings).tracking_uri == old_uri
    assert f"MLflow store: {old_uri} (from MLFLOW_SERVER_URL)" in caplog.text

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert Settings().tracking_uri == "http://tracking:5000"


def test_with_neither_set_the_embedded_store_is_announced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings()
    assert settings.tracking_uri_source == "embedded default"
    with caplog.at_level(logging.WARNING, logger="worker.registration.registry"):
        registry = HokusaiModelRegistry(settings=settings)
    assert registry.tracking_uri.startswith("sqlite:///") and registry.tracking_uri.endswith("/home/mlflow.db")
    assert f"MLflow store: {registry.tracking_uri} (from embedded default)" in caplog.text


# ------------------------------------------------------------------ queued path
def test_queued_jobs_log_the_old_run_params(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any, staging: Path
) -> None:
    """The worker's job path (register_job -> register_logged) logs the same params as the in-process path."""
    from hokusai_registry.settings import get_settings
    from hokusai_registry.validation import validate_job
    from worker.registration.job import register_job

    model_dir = save_model_dir(sk_model, staging)
    baseline = register_job(validate_job(job_fields(model_dir, model_type="lead_scoring")), registry, get_settings())
    improved_job = job_fields(
        model_dir,
        kind="improved",
        model_type="lead_scoring",
        baseline_id=baseline["model_id"],
        delta_metrics={"auc_improvement": 0.01},
        contributor=CONTRIBUTOR,
    )
    improved = register_job(validate_job(improved_job), registry, get_settings())
    client = MlflowClient(tracking_uri)
    base_params = client.get_run(baseline["run_id"]).data.params
    assert (base_params["model_type"], base_params["is_baseline"], base_params["metadata_dataset"]) == (
        "lead_scoring",
        "True",
        "leads-2026-11",
    )
    assert "metadata_notes" not in base_params  # 2000 characters: metadata only
    params = client.get_run(improved["run_id"]).data.params
    assert {k: params[k] for k in ("baseline_model_id", "contributor_address", "improvement_count")} == {
        "baseline_model_id": baseline["model_id"],
        "contributor_address": CONTRIBUTOR,  # as the job gave it
        "improvement_count": "1",
    }
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="params.model_type = 'lead_scoring'")
    assert sorted(runs["run_id"]) == sorted([baseline["run_id"], improved["run_id"]])


def test_a_resumed_job_still_gets_the_old_run_params(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any, staging: Path
) -> None:
    """A worker that died between logging and registering: the next attempt registers that model and its params."""
    import uuid

    import mlflow.sklearn

    from hokusai_registry.settings import get_settings
    from hokusai_registry.validation import validate_job
    from worker.registration.job import register_job

    job_id = str(uuid.uuid4())
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:  # the first attempt's run, cut short
        logged = mlflow.sklearn.log_model(
            sk_model, name="model", pip_requirements=["scikit-learn"], tags={"job_id": job_id}
        )
    job = validate_job(job_fields(save_model_dir(sk_model, staging), job_id=job_id, model_type="regression"))
    result = register_job(job, registry, get_settings())
    assert (result["model_uuid"], result["run_id"]) == (logged.model_id, run.info.run_id)
    params = MlflowClient(tracking_uri).get_run(run.info.run_id).data.params
    assert (params["model_type"], params["is_baseline"], params["metadata_dataset"]) == (
        "regression",
        "True",
        "leads-2026-11",
    )


# ------------------------------------------------------------------ the four differences from the pre-upgrade class
def test_promotion_writes_the_old_stage_name_and_old_route_filters_find_it(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    """``lifecycle_stage`` holds ``Production`` / ``Archived``, the names the old class and its routes used."""
    first = registry.register_baseline(sk_model, "ranking", {})
    second = registry.register_baseline(sk_model, "ranking", {})
    registry.promote_model_to_production(first["model_name"], first["version"])
    registry.promote_model_to_production(second["model_name"], second["version"])
    client = MlflowClient(tracking_uri)
    production = client.search_model_versions("tags.lifecycle_stage = 'Production'")
    archived = client.search_model_versions("tags.lifecycle_stage = 'Archived'")
    assert [(v.name, str(v.version)) for v in production] == [(second["model_name"], "2")]
    assert [(v.name, str(v.version)) for v in archived] == [(first["model_name"], "1")]


def test_a_version_promoted_by_the_previous_release_is_found_by_the_old_filter_after_the_backfill(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    """The previous release wrote ``production`` / ``archived``: the backfill rewrites them, once."""
    old = registry.register_baseline(sk_model, "regression", {})
    current = registry.register_baseline(sk_model, "regression", {})
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias(current["model_name"], "production", current["version"])
    client.set_model_version_tag(current["model_name"], current["version"], "lifecycle_stage", "production")
    client.set_model_version_tag(old["model_name"], old["version"], "lifecycle_stage", "archived")

    report = registry.backfill_model_uuids()
    assert sorted((c["version"], c["tags"]) for c in report["completed"]) == [
        ("1", {"lifecycle_stage": "Archived"}),
        ("2", {"lifecycle_stage": "Production"}),
    ]
    found = client.search_model_versions("tags.lifecycle_stage = 'Production'")
    assert [(v.name, str(v.version)) for v in found] == [(current["model_name"], current["version"])]
    assert registry.backfill_model_uuids()["completed"] == []
    assert [m["version"] for m in registry.get_production_models()] == [current["version"]]


def test_contributor_models_created_at_is_the_runs_start_as_a_utc_datetime(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    """The old value was ``search_runs()``'s ``start_time``: a timezone-aware pandas Timestamp."""
    baseline = registry.register_baseline(sk_model, "lead_scoring", {})
    improved = registry.register_improved_model(sk_model, baseline["model_id"], {"auc_improvement": 0.1}, CONTRIBUTOR)
    (item,) = registry.get_contributor_models(CONTRIBUTOR)
    created = item["created_at"]
    _assert_utc_datetime(created)
    start_ms = MlflowClient(tracking_uri).get_run(improved["run_id"]).info.start_time
    assert created == datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    (old_value,) = mlflow.search_runs(search_all_experiments=True, filter_string="params.improvement_count = '1'")[
        "start_time"
    ]
    assert created == old_value.to_pydatetime()
    _assert_encodable_the_old_ways(item)


def test_with_the_experiment_setting_at_the_default_experiment_the_old_search_finds_the_runs(
    tracking_uri: str, sk_model: Any
) -> None:
    """``MLFLOW_EXPERIMENT_ID=0``: runs go to MLflow's Default experiment, which a search without experiments reads."""
    registry = HokusaiModelRegistry(tracking_uri, settings=Settings(mlflow_experiment_id="0"))
    assert registry.experiment_id() == "0"
    result = registry.register_baseline(sk_model, "lead_scoring", {})
    runs = mlflow.search_runs(filter_string="params.model_type = 'lead_scoring'")
    assert list(runs["run_id"]) == [result["run_id"]]


def test_with_the_default_settings_old_searches_name_the_experiment(
    registry: HokusaiModelRegistry, sk_model: Any
) -> None:
    """Today's default (an experiment of its own): the documented ways an old caller finds the runs."""
    result = registry.register_baseline(sk_model, "lead_scoring", {})
    assert registry.experiment_id() != "0"
    assert mlflow.search_runs(filter_string="params.model_type = 'lead_scoring'").empty
    for found in (
        mlflow.search_runs(
            experiment_ids=[registry.experiment_id()], filter_string="params.model_type = 'lead_scoring'"
        ),
        mlflow.search_runs(experiment_names=["hokusai-registry"], filter_string="params.model_type = 'lead_scoring'"),
        mlflow.search_runs(search_all_experiments=True, filter_string="params.model_type = 'lead_scoring'"),
    ):
        assert list(found["run_id"]) == [result["run_id"]]


def test_an_experiment_setting_naming_no_experiment_is_a_configuration_error(tracking_uri: str, sk_model: Any) -> None:
    from hokusai_registry.errors import ConfigurationError

    registry = HokusaiModelRegistry(tracking_uri, settings=Settings(mlflow_experiment_id="4242"))
    with pytest.raises(ConfigurationError, match="MLFLOW_EXPERIMENT_ID=4242: no such experiment"):
        registry.register_baseline(sk_model, "lead_scoring", {})
    with pytest.raises(ValueError, match="mlflow_experiment_id"):
        Settings(mlflow_experiment_id="Default")


def test_contributor_address_param_keeps_the_case_given_and_lookups_ignore_case(
    registry: HokusaiModelRegistry, tracking_uri: str, sk_model: Any
) -> None:
    """An EIP-55 search finds the run, as it found the old class's; the registry's own lookups match any case."""
    baseline = registry.register_baseline(sk_model, "classification", {})
    improved = registry.register_improved_model(sk_model, baseline["model_id"], {}, CONTRIBUTOR)
    old_search = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"params.contributor_address = '{CONTRIBUTOR}'"
    )
    assert list(old_search["run_id"]) == [improved["run_id"]]
    any_case = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"params.contributor_address ILIKE '{CONTRIBUTOR.upper()}'"
    )
    assert list(any_case["run_id"]) == [improved["run_id"]]
    version = MlflowClient(tracking_uri).get_model_version(improved["model_name"], improved["version"])
    assert version.tags["contributor"] == CONTRIBUTOR.lower()  # the lookup tag stays normalised
    for asked in (CONTRIBUTOR, CONTRIBUTOR.lower(), "0x" + CONTRIBUTOR[2:].upper()):
        assert [m["run_id"] for m in registry.get_contributor_models(asked)] == [improved["run_id"]]
