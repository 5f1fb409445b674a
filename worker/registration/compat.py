"""The result shapes the pre-upgrade ``HokusaiModelRegistry`` returned, kept for its callers.

Each function adds the old keys (with the old JSON types) to what the registry reads from
MLflow; the registry's own keys stay beside them. What changed on purpose is in docs/upgrade.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mlflow.entities.model_registry import ModelVersion, RegisteredModel

from hokusai_registry.contract import MODEL_TYPES, BaselineRef
from hokusai_registry.errors import InvalidInputError, ModelNotFoundError
from worker.registration import model_inputs

if TYPE_CHECKING:
    from worker.registration.registry import HokusaiModelRegistry

#: MLflow's retired stage name, still what old callers compare against.
PRODUCTION_STAGE = "Production"
#: Version tag the registry keeps in step with the ``production`` alias.
TAG_LIFECYCLE_STAGE = "lifecycle_stage"
#: Suffix of the metrics an improvement is measured in, summed by ``cumulative_improvement``.
IMPROVEMENT_SUFFIX = "_improvement"


def lineage_entry(summary: dict[str, Any], version: ModelVersion, metrics: Mapping[str, float]) -> dict[str, Any]:
    """A lineage item: the summary plus ``created_at`` (epoch milliseconds, int) and ``metrics``."""
    return {**summary, "created_at": int(version.creation_timestamp or 0), "metrics": dict(metrics)}


def cumulative_improvement(
    entries: list[dict[str, Any]], baseline_metrics: Mapping[str, float] | None
) -> dict[str, float | int]:
    """Per baseline metric ``m``: the sum of the positive total of ``m_improvement`` over improved versions.

    ``baseline_metrics`` are the metrics of the lineage's baseline (a baseline entry of the lineage,
    else the version its improved entries name). ``total_improvements`` counts improved entries.
    """
    improved = [entry for entry in entries if not entry.get("is_baseline")]
    result: dict[str, float | int] = {}
    for name in baseline_metrics or {}:
        if name.endswith(IMPROVEMENT_SUFFIX):
            continue
        total = sum(float(entry["metrics"].get(f"{name}{IMPROVEMENT_SUFFIX}", 0.0)) for entry in improved)
        if total > 0:
            result[name] = total
    result["total_improvements"] = len(improved)
    return result


def contributor_entry(
    summary: dict[str, Any],
    version: ModelVersion,
    *,
    queried_address: str,
    metrics: Mapping[str, float],
    run_start_ms: int | None,
) -> dict[str, Any]:
    """A contributor item: the summary plus ``contributor_address`` (as asked), ``metrics``, ``created_at``.

    ``created_at`` is the run's start as an ISO 8601 string (the old result was a pandas Timestamp,
    which JSON encoders write as that string); the version's creation time when the run is gone.
    """
    millis = run_start_ms or version.creation_timestamp
    created = _iso(int(millis)) if millis else summary["registration_timestamp"]
    return {**summary, "contributor_address": queried_address, "metrics": dict(metrics), "created_at": created}


def promotion_result(model_name: str, version: str, alias: str) -> dict[str, Any]:
    """The old ``{model_id, version, stage, timestamp}`` plus the alias that now carries the promotion."""
    return {
        "model_id": model_name,
        "model_name": model_name,
        "version": version,
        "stage": PRODUCTION_STAGE,
        "alias": alias,
        "timestamp": datetime.now(UTC).isoformat(),
    }


def production_entries(models: Iterable[RegisteredModel], alias: str) -> list[dict[str, Any]]:
    """``{model_name, version, stage, description, tags}`` for each model whose ``alias`` is set.

    A model registered before the upgrade whose latest version sits in MLflow's retired
    ``Production`` stage counts too, until the backfill moves that onto the alias.
    """
    found = []
    for model in models:
        version = (model.aliases or {}).get(alias)
        if version is None:
            staged = [v for v in (model.latest_versions or []) if v.current_stage == PRODUCTION_STAGE]
            version = staged[0].version if staged else None
        if version is None:
            continue
        found.append(
            {
                "model_name": model.name,
                "version": str(version),
                "stage": PRODUCTION_STAGE,
                "alias": alias,
                "description": model.description,
                "tags": dict(model.tags or {}),
            }
        )
    return sorted(found, key=lambda item: item["model_name"])


def fill_from_legacy_params(entry: dict[str, Any], params: Mapping[str, str]) -> None:
    """Versions the old class registered, not yet backfilled: read what their run params say."""
    from worker.registration.registry import TAG_IS_BASELINE

    if TAG_IS_BASELINE not in entry["tags"] and params.get("is_baseline") == "True":
        entry["is_baseline"] = True
    if not entry["is_baseline"]:
        entry["baseline_id"] = entry.get("baseline_id") or params.get("baseline_model_id")
        entry["contributor"] = entry.get("contributor") or params.get("contributor_address")
    if entry.get("model_type") is None and params.get("model_type"):
        entry["model_type"] = params["model_type"]


def baseline_metrics(registry: HokusaiModelRegistry, entries: list[dict[str, Any]]) -> dict[str, float] | None:
    """Metrics of the lineage's baseline: its baseline entry, else the version improved entries name."""
    for entry in entries:
        if entry.get("is_baseline"):
            return dict(entry["metrics"])
    baseline_id = next((e["baseline_id"] for e in entries if e.get("baseline_id")), None)
    try:
        ref = model_inputs.parse_baseline(baseline_id)
    except InvalidInputError:
        return None
    version = registry.find_version(ref.name, ref.version)
    if version is None:
        return None
    run = registry._runs([version.run_id]).get(version.run_id or "")
    return dict(run.data.metrics) if run else None


def baseline_model_type(registry: HokusaiModelRegistry, ref: BaselineRef) -> str:
    """The model type of a baseline whose name implies none: its version tag, else its run param."""
    from worker.registration.registry import TAG_MODEL_TYPE

    version = registry.find_version(ref.name, ref.version)
    if version is None:
        raise ModelNotFoundError(
            f"baseline_id {ref.name}/{ref.version}: no such model version, and the name implies "
            "no model type (hokusai_<model_type>_baseline would)"
        )
    model_type = (version.tags or {}).get(TAG_MODEL_TYPE)
    if model_type is None and version.run_id:
        run = registry._runs([version.run_id]).get(version.run_id)
        model_type = run.data.params.get("model_type") if run else None
    if model_type not in MODEL_TYPES:
        raise InvalidInputError(
            f"baseline_id {ref.name}/{ref.version}: cannot tell its model type (tag model_type="
            f"{model_type!r}); tag the version with one of {', '.join(MODEL_TYPES)}"
        )
    return str(model_type)


def _iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat()
