"""The result shapes the pre-upgrade ``HokusaiModelRegistry`` returned, kept for its callers.

Each function adds the old keys (with the old types) to what the registry reads from MLflow; the
registry's own keys stay beside them. Functions that read MLflow take a :class:`RegistryStore`.
What changed on purpose is in docs/upgrade.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from mlflow.entities.model_registry import ModelVersion, RegisteredModel

from hokusai_registry.contract import MODEL_TYPES, BaselineRef
from hokusai_registry.errors import InvalidInputError, ModelNotFoundError
from worker.registration import model_inputs, reads, tags
from worker.registration.results import utc_datetime

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

    ``created_at`` is the run's start as a timezone-aware UTC ``datetime`` (the old value was a
    pandas Timestamp, a ``datetime`` subclass: ``isoformat()``, JSON encoders' ``default=str`` and
    FastAPI's encoder write it as before); the version's creation time when the run is gone.
    """
    millis = run_start_ms or version.creation_timestamp
    created = utc_datetime(int(millis)) if millis else datetime.fromisoformat(summary["registration_timestamp"])
    return {**summary, "contributor_address": queried_address, "metrics": dict(metrics), "created_at": created}


def promotion_result(model_name: str, version: str, alias: str) -> dict[str, Any]:
    """The old ``{model_id, version, stage, timestamp}`` plus the alias that now carries the promotion."""
    return {
        "model_id": model_name,
        "model_name": model_name,
        "version": version,
        "stage": tags.PRODUCTION_STAGE,
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
            staged = [v for v in (model.latest_versions or []) if v.current_stage == tags.PRODUCTION_STAGE]
            version = staged[0].version if staged else None
        if version is None:
            continue
        found.append(
            {
                "model_name": model.name,
                "version": str(version),
                "stage": tags.PRODUCTION_STAGE,
                "alias": alias,
                "description": model.description,
                "tags": dict(model.tags or {}),
            }
        )
    return sorted(found, key=lambda item: item["model_name"])


def fill_from_legacy_params(entry: dict[str, Any], params: Mapping[str, str]) -> None:
    """Versions the old class registered, not yet backfilled: read what their run params say."""
    if tags.TAG_IS_BASELINE not in entry["tags"] and params.get(tags.PARAM_IS_BASELINE) == tags.PARAM_TRUE:
        entry["is_baseline"] = True
    if not entry["is_baseline"]:
        entry["baseline_id"] = entry.get("baseline_id") or params.get(tags.PARAM_BASELINE_ID)
        entry["contributor"] = entry.get("contributor") or params.get(tags.PARAM_CONTRIBUTOR)
    if entry.get("model_type") is None and params.get(tags.PARAM_MODEL_TYPE):
        entry["model_type"] = params[tags.PARAM_MODEL_TYPE]


def baseline_metrics(store: reads.RegistryStore, entries: list[dict[str, Any]]) -> dict[str, float] | None:
    """Metrics of the lineage's baseline: its baseline entry, else the version improved entries name."""
    for entry in entries:
        if entry.get("is_baseline"):
            return dict(entry["metrics"])
    baseline_id = next((e["baseline_id"] for e in entries if e.get("baseline_id")), None)
    try:
        ref = model_inputs.parse_baseline(baseline_id)
    except InvalidInputError:
        return None
    version = reads.find_version(store, ref.name, ref.version)
    if version is None:
        return None
    run = reads.run_of(store, version.run_id)
    return dict(run.data.metrics) if run else None


def baseline_model_type(store: reads.RegistryStore, ref: BaselineRef) -> str:
    """The model type of a baseline whose name implies none: its version tag, else its run param."""
    version = reads.find_version(store, ref.name, ref.version)
    if version is None:
        raise ModelNotFoundError(
            f"baseline_id {ref.name}/{ref.version}: no such model version, and the name implies "
            "no model type (hokusai_<model_type>_baseline would)"
        )
    model_type = (version.tags or {}).get(tags.TAG_MODEL_TYPE)
    if model_type is None:
        run = reads.run_of(store, version.run_id)
        model_type = run.data.params.get(tags.PARAM_MODEL_TYPE) if run else None
    if model_type not in MODEL_TYPES:
        raise InvalidInputError(
            f"baseline_id {ref.name}/{ref.version}: cannot tell its model type (tag model_type="
            f"{model_type!r}); tag the version with one of {', '.join(MODEL_TYPES)}"
        )
    return str(model_type)
