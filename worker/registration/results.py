"""The registry's result dicts: a registration's result, and a registered version's summary.

A result is what ``register_*`` and ``get_model_by_uuid`` return (from MLflow's ``ModelInfo`` and
``ModelVersion``); a summary is the shorter item lookups and lists start from (from the version and
its tags alone). Times are timezone-aware UTC, ISO 8601.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.models.model import ModelInfo

from hokusai_registry.contract import MODEL_UUID_RE
from worker.registration import reads, signatures, tags


def registration_result(
    info: ModelInfo,
    version: ModelVersion,
    *,
    model_type: str,
    is_baseline: bool,
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """``model_id`` (``name/version``), ``model_name``, ``version``, ``run_id``, ``model_uuid``, ``model_uri``, ..."""
    return {
        "model_id": f"{version.name}/{version.version}",
        "model_name": version.name,
        "version": str(version.version),
        "model_type": model_type,
        "is_baseline": is_baseline,
        "run_id": version.run_id or info.run_id,
        "registration_timestamp": utc_iso(version.creation_timestamp),
        "model_uri": info.model_uri,
        "model_uuid": info.model_uuid,
        "artifact_path": info.artifact_path,
        "flavors": sorted(info.flavors or {}),
        "signature": signatures.signature_to_json(info.signature),
        "mlflow_version": info.mlflow_version,
        "metadata": dict(metadata),
    }


def summaries(store: reads.RegistryStore, versions: list[ModelVersion]) -> list[dict[str, Any]]:
    """:func:`summary` of each version, in order, with its aliases (read once per registered model)."""
    aliases = reads.aliases_by_version(store, (v.name for v in versions))
    return [summary(v, aliases.get((v.name, str(v.version)), [])) for v in versions]


def summary(version: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    """What a version's tags say: ids, uuid, type, baseline, contributor, registration time, aliases, tags."""
    version_tags = dict(version.tags or {})
    return {
        "model_id": f"{version.name}/{version.version}",
        "model_name": version.name,
        "version": str(version.version),
        "run_id": version.run_id,
        "model_uuid": version_tags.get(tags.TAG_MODEL_UUID) or model_id_from_source(version.source),
        "model_uri": version.source,
        "model_type": version_tags.get(tags.TAG_MODEL_TYPE),
        "is_baseline": version_tags.get(tags.TAG_IS_BASELINE) == tags.TRUE,
        "baseline_id": version_tags.get(tags.TAG_BASELINE_ID),
        "contributor": version_tags.get(tags.TAG_CONTRIBUTOR),
        "registration_timestamp": utc_iso(version.creation_timestamp),
        "aliases": aliases,
        "tags": version_tags,
    }


def model_id_from_source(source: str | None) -> str | None:
    """The LoggedModel id of a ``models:/m-...`` source, else None."""
    if source and source.startswith("models:/m-"):
        candidate = source.removeprefix("models:/").split("/", 1)[0]
        return candidate if MODEL_UUID_RE.fullmatch(candidate) else None
    return None


def utc_datetime(millis: int | None) -> datetime:
    """Epoch milliseconds as a timezone-aware UTC datetime (now, for None or 0)."""
    return datetime.fromtimestamp(millis / 1000, tz=UTC) if millis else datetime.now(UTC)


def utc_iso(millis: int | None) -> str:
    """:func:`utc_datetime` in ISO 8601."""
    return utc_datetime(millis).isoformat()
