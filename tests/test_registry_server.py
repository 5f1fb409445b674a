"""``HokusaiModelRegistry`` through a real ``mlflow server`` (REST) backed by PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hokusai_registry.errors import InvalidInputError
from tests.mlflow_server import (  # noqa: F401 (mlflow_server is a fixture)
    database_exists,
    fresh_database,
    mlflow_server,
    running_mlflow_server,
)
from tests.support import port_open
from worker.registration.registry import HokusaiModelRegistry

pytestmark = pytest.mark.server

CONTRIBUTOR = "0x" + "5EaF" * 10


def version_numbers(server: str, name: str) -> list[str]:
    return sorted((str(v.version) for v in MlflowClient(server).search_model_versions(f"name = '{name}'")), key=int)


def test_register_and_find_through_the_server(
    mlflow_server: str,  # noqa: F811 (the fixture)
    sk_model: Any,
    example_records: list[dict[str, float]],
    tmp_path: Path,
) -> None:
    registry = HokusaiModelRegistry(tracking_uri=mlflow_server)
    assert mlflow.get_tracking_uri() == mlflow_server == registry.tracking_uri
    metadata = {"card": "long text " * 1500, "nested": {"rows": [1, 2.5, None], "ok": True}, "yes": "yes"}

    baseline = registry.register_baseline(sk_model, "classification", metadata, input_example=example_records)
    assert version_numbers(mlflow_server, "hokusai_classification_baseline") == [baseline["version"]]
    improved = registry.register_improved_model(sk_model, baseline["model_id"], {"accuracy": 0.05}, CONTRIBUTOR)
    assert version_numbers(mlflow_server, "hokusai_classification_improved") == [improved["version"]]

    # Artifacts go through the server (proxied), not to a folder on the client's host.
    for result in (baseline, improved):
        assert result["artifact_path"].startswith("mlflow-artifacts:/"), result["artifact_path"]
        assert result["model_uri"] == f"models:/{result['model_uuid']}"
        assert result["flavors"] == ["python_function", "sklearn"]
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=baseline["model_uri"], dst_path=str(tmp_path)))
    assert (model_dir / "MLmodel").is_file()
    assert json.loads(baseline["signature"])["inputs"] == json.dumps(
        [{"type": "double", "name": name, "required": True} for name in ("f0", "f1", "f2")]
    )

    found = registry.get_model_by_uuid(baseline["model_uuid"])
    assert found is not None
    assert {key: found[key] for key in baseline} == baseline
    assert json.dumps(found["metadata"], sort_keys=True) == json.dumps(metadata, sort_keys=True)
    assert found["tags"]["model_uuid"] == baseline["model_uuid"]
    found = registry.get_model_by_uuid(improved["model_uuid"])
    assert found is not None
    assert (found["model_id"], found["baseline_id"], found["contributor"]) == (
        improved["model_id"],
        baseline["model_id"],
        CONTRIBUTOR.lower(),
    )
    assert registry.get_model_by_uuid("m-" + "f" * 32) is None
    with pytest.raises(InvalidInputError):
        registry.get_model_by_uuid(f"{baseline['model_uuid']}' OR name LIKE '%")

    by_contributor = registry.get_contributor_models(CONTRIBUTOR.lower())
    assert [(m["model_id"], m["model_uuid"], m["baseline_id"]) for m in by_contributor] == [
        (improved["model_id"], improved["model_uuid"], baseline["model_id"])
    ]
    registry.promote_model_to_production(improved["model_name"], improved["version"])
    lineage = registry.get_model_lineage(improved["model_name"])
    assert [(m["model_id"], m["aliases"]) for m in lineage] == [(improved["model_id"], ["production"])]


def test_repeated_registrations_through_the_server(
    mlflow_server: str,  # noqa: F811 (the fixture)
    sk_model: Any,
    tmp_path: Path,
) -> None:
    """One version per call, and no requirement inference (its list would differ from the defaults)."""
    import sklearn

    registry = HokusaiModelRegistry(tracking_uri=mlflow_server)
    before = version_numbers(mlflow_server, "hokusai_regression_baseline")
    results = [registry.register_baseline(sk_model, "regression", {"run": n}) for n in range(4)]
    after = version_numbers(mlflow_server, "hokusai_regression_baseline")
    assert after == before + [r["version"] for r in results]
    assert len(after) == len(before) + 4
    for result in results:
        assert registry.get_model_by_uuid(result["model_uuid"])["model_id"] == result["model_id"]
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=results[-1]["model_uri"], dst_path=str(tmp_path)))
    assert (model_dir / "requirements.txt").read_text().splitlines() == [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
    ]


def test_server_context_manager_cleans_up(tmp_path: Path) -> None:
    """The helper other modules use: a restarted server keeps its data; on exit it stops and the DB goes."""
    with fresh_database() as backend_uri:
        assert database_exists(backend_uri)
        with running_mlflow_server(artifacts_dir=tmp_path / "artifacts", backend_uri=backend_uri) as url:
            MlflowClient(url).create_registered_model("hokusai_ranking_baseline")
        port = int(url.rsplit(":", 1)[1])
        assert not port_open("127.0.0.1", port)
        with running_mlflow_server(artifacts_dir=tmp_path / "artifacts", backend_uri=backend_uri) as url:
            assert [m.name for m in MlflowClient(url).search_registered_models()] == ["hokusai_ranking_baseline"]
    assert not port_open("127.0.0.1", int(url.rsplit(":", 1)[1]))
    assert not database_exists(backend_uri)
