"""The upgrade path end to end: versions made the way the old class and MLflow 2 made them,
``hokusai-registry backfill-uuids`` run as a subprocess, then every version found by uuid,
lineage and contributor. Real MLflow sqlite store; no LoggedModels behind the old versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from worker.registration.registry import HokusaiModelRegistry

MIXED = "0x" + "AbCdEf0123" * 4  # the old class kept EIP-55 mixed case in tags and params
CLI = [sys.executable, "-c", "from hokusai_app.cli import main; main()"]


def _old_version(
    client: MlflowClient,
    sk_model: Any,
    tmp_path: Path,
    name: str,
    *,
    params: dict[str, Any],
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    drop_uuid: bool = False,
) -> tuple[Any, str | None]:
    """A version as MLflow 2 and the old class left it: a run artifact folder, a ``runs:/`` source, no LoggedModel."""
    import mlflow.sklearn

    folder = tmp_path / f"saved-{name}-{len(list(tmp_path.iterdir()))}"
    mlflow.sklearn.save_model(sk_model, str(folder), pip_requirements=["scikit-learn"])
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    uuid = mlmodel.pop("model_uuid", None)
    if drop_uuid:
        (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
        uuid = None
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, key, value)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags or {}
    )
    return version, uuid


def _backfill(tracking_uri: str, *extra: str) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [*CLI, "backfill-uuids", "--tracking-uri", tracking_uri, *extra],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


@pytest.fixture
def old_store(tracking_uri: str, sk_model: Any, tmp_path: Path) -> dict[str, Any]:
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    made = tmp_path / "made"
    made.mkdir()
    baseline, baseline_uuid = _old_version(
        client,
        sk_model,
        made,
        "hokusai_lead_scoring_baseline",
        params={"model_type": "lead_scoring", "is_baseline": True, "metadata_dataset": "q3"},
        metrics={"auc": 0.7},
    )
    improved, improved_uuid = _old_version(
        client,
        sk_model,
        made,
        "hokusai_lead_scoring_improved",
        params={
            "baseline_model_id": "hokusai_lead_scoring_baseline/1",
            "contributor_address": MIXED,
            "improvement_count": 1,
        },
        metrics={"auc_improvement": 0.05},
        tags={"baseline_model_id": "hokusai_lead_scoring_baseline/1", "contributor": MIXED},
    )
    custom_base, custom_base_uuid = _old_version(
        client, sk_model, made, "custom_model_baseline", params={"model_type": "regression", "is_baseline": True}
    )
    custom_improved, custom_improved_uuid = _old_version(
        client,
        sk_model,
        made,
        "custom_model_improved",
        params={"baseline_model_id": "custom_model_baseline/1", "contributor_address": MIXED},
        tags={"baseline_model_id": "custom_model_baseline/1", "contributor": MIXED},
        drop_uuid=True,  # an MLmodel written without a uuid: the backfill assigns one
    )
    client.transition_model_version_stage("hokusai_lead_scoring_baseline", "1", "Production")
    # A version whose model is gone: reported, never fatal.
    client.create_registered_model("lost_model")
    client.create_model_version("lost_model", (tmp_path / "gone").as_uri())
    return {
        "uuids": {
            "hokusai_lead_scoring_baseline/1": baseline_uuid,
            "hokusai_lead_scoring_improved/1": improved_uuid,
            "custom_model_baseline/1": custom_base_uuid,
            "custom_model_improved/1": custom_improved_uuid,
        },
        "runs": {
            "hokusai_lead_scoring_baseline/1": baseline.run_id,
            "hokusai_lead_scoring_improved/1": improved.run_id,
            "custom_model_baseline/1": custom_base.run_id,
            "custom_model_improved/1": custom_improved.run_id,
        },
    }


def _tags(tracking_uri: str) -> dict[str, dict[str, str]]:
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    return {f"{v.name}/{v.version}": dict(v.tags) for v in client.search_model_versions()}


def test_backfill_brings_every_old_version_to_the_new_lookups(tracking_uri: str, old_store: dict[str, Any]) -> None:
    registry = HokusaiModelRegistry(tracking_uri)
    uuids = old_store["uuids"]
    assert uuids["custom_model_improved/1"] is None and all(
        u and len(u) == 32 for k, u in uuids.items() if k != "custom_model_improved/1"
    )
    before = _tags(tracking_uri)

    # Dry run: the report says everything, the store is untouched.
    dry, dry_err = _backfill(tracking_uri, "--dry-run")
    assert dry["dry_run"] is True and dry["scanned"] == 5
    assert _tags(tracking_uri) == before
    assert "scanning model versions" in dry_err and "dry run: would tag 4 of 5 version(s)" in dry_err
    assert registry.get_model_by_uuid(uuids["hokusai_lead_scoring_baseline/1"]) is None

    report, err = _backfill(tracking_uri)
    assert (report["dry_run"], report["scanned"], report["already_tagged"]) == (False, 5, 0)
    tagged = {f"{t['model_name']}/{t['version']}": t["model_uuid"] for t in report["tagged"]}
    assert {k: v for k, v in tagged.items() if k != "custom_model_improved/1"} == {
        k: v for k, v in uuids.items() if k != "custom_model_improved/1"
    }
    assigned = tagged["custom_model_improved/1"]
    assert len(assigned) == 32
    assert [
        (u["model_name"], u["reason"].startswith("cannot read the model at file://")) for u in report["unresolved"]
    ] == [("lost_model", True)]
    assert "unresolved lost_model/1: cannot read the model at" in err
    assert [(i["model_name"], i["reasons"]) for i in report["incomplete"]] == [
        (
            "lost_model",
            [
                "is_baseline: the name ends in neither _baseline nor _improved and no run param says",
                "model_type: cannot be derived (found None); tag it by hand",
            ],
        )
    ]
    assert report["promoted"] == [{"model_name": "hokusai_lead_scoring_baseline", "version": "1"}]

    tags = _tags(tracking_uri)
    expected = {
        "hokusai_lead_scoring_baseline/1": {"is_baseline": "true", "model_type": "lead_scoring"},
        "hokusai_lead_scoring_improved/1": {
            "is_baseline": "false",
            "model_type": "lead_scoring",
            "baseline_model_id": "hokusai_lead_scoring_baseline/1",
            "contributor": MIXED.lower(),
        },
        "custom_model_baseline/1": {"is_baseline": "true", "model_type": "regression"},
        "custom_model_improved/1": {
            "is_baseline": "false",
            "model_type": "regression",  # from its baseline's run params
            "baseline_model_id": "custom_model_baseline/1",
            "contributor": MIXED.lower(),
        },
    }
    for key, wanted in expected.items():
        assert {k: tags[key].get(k) for k in wanted} == wanted, key

    # Found by uuid, described without an exception.
    for key, uuid in {**uuids, "custom_model_improved/1": assigned}.items():
        found = registry.get_model_by_uuid(uuid)
        assert found is not None, key
        assert (found["model_id"], found["model_uuid"], found["run_id"]) == (key, uuid, old_store["runs"][key])
        assert found["model_type"] == expected[key]["model_type"]
        assert found["is_baseline"] is (expected[key]["is_baseline"] == "true")
        assert "sklearn" in found["flavors"]

    # Lineage and contributor lookups, in any letter case.
    lineage = registry.get_model_lineage("hokusai_lead_scoring_improved")
    assert [(e["baseline_id"], e["contributor"], e["is_baseline"], e["metrics"]) for e in lineage] == [
        ("hokusai_lead_scoring_baseline/1", MIXED.lower(), False, {"auc_improvement": 0.05})
    ]
    for asked in (MIXED, MIXED.lower(), "0x" + MIXED[2:].upper()):
        assert sorted(m["model_id"] for m in registry.get_contributor_models(asked)) == [
            "custom_model_improved/1",
            "hokusai_lead_scoring_improved/1",
        ]
    assert [(m["model_name"], m["version"]) for m in registry.get_production_models()] == [
        ("hokusai_lead_scoring_baseline", "1")
    ]

    # Idempotent: a second run changes nothing and reports nothing new.
    after = _tags(tracking_uri)
    again, _ = _backfill(tracking_uri)
    assert (again["tagged"], again["completed"], again["promoted"], again["already_tagged"]) == ([], [], [], 4)
    assert _tags(tracking_uri) == after
