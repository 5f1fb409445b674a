"""Finding registered versions again: by ``model_uuid``, by a tag, by model name (lineage), by contributor.

Plain functions over a :class:`~worker.registration.reads.RegistryStore`; ``HokusaiModelRegistry``
delegates to them. Every value pasted into an MLflow filter is matched in full against the
contract's strict pattern first (MLflow filters have no escaping).
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion

from hokusai_registry.contract import MODEL_NAME_RE, MODEL_UUID_RE, is_contributor_address
from hokusai_registry.errors import InvalidInputError, ModelNotFoundError
from worker.registration import compat, reads, results, tags
from worker.registration.mlflow_errors import mlflow_boundary
from worker.registration.reads import RegistryStore

logger = logging.getLogger(__name__)


def get_model_by_uuid(store: RegistryStore, model_uuid: str) -> dict[str, Any] | None:
    """The registration result (plus ``tags``) of the version carrying ``model_uuid``, or None.

    Raises:
        InvalidInputError: ``model_uuid`` is not an MLflow model id (``m-<32 hex>``); it is never
            pasted into a filter string then.
    """
    if not isinstance(model_uuid, str) or not MODEL_UUID_RE.fullmatch(model_uuid):
        raise InvalidInputError(f"model_uuid must look like 'm-' + 32 hex characters, got {model_uuid!r}")
    version = find_version_by_tag(store, tags.TAG_MODEL_UUID, model_uuid)
    return None if version is None else describe_version(store, version)


def find_version_by_tag(store: RegistryStore, key: str, value: str) -> ModelVersion | None:
    """The oldest version whose tag ``key`` equals ``value`` (both validated by the caller)."""
    versions = reads.search_versions(store, f"tags.{key} = '{value}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def describe_version(store: RegistryStore, version: ModelVersion) -> dict[str, Any]:
    """Full result for a registered version, read back from its tags and ``ModelInfo``.

    The model is read through ``models:/<model_uuid>`` when it is an MLflow 3 LoggedModel,
    else through the version's own source (``runs:/...`` of versions registered before).
    """
    version_tags = dict(version.tags or {})
    store.activate()
    uuid = version_tags.get(tags.TAG_MODEL_UUID) or results.model_id_from_source(version.source)
    uri = f"models:/{uuid}" if uuid and uuid.startswith("m-") else str(version.source)
    with mlflow_boundary(f"reading model {version.name}/{version.version}"):
        info = mlflow.models.get_model_info(uri)
    result = results.registration_result(
        info,
        version,
        model_type=version_tags.get(tags.TAG_MODEL_TYPE, ""),
        is_baseline=version_tags.get(tags.TAG_IS_BASELINE) == tags.TRUE,
        metadata=info.metadata or {},
    )
    result["model_uuid"] = uuid or info.model_uuid
    result["tags"] = version_tags
    if tags.TAG_BASELINE_ID in version_tags:
        result["baseline_id"] = version_tags[tags.TAG_BASELINE_ID]
        result["contributor"] = version_tags.get(tags.TAG_CONTRIBUTOR)
    return result


def get_model_lineage(store: RegistryStore, model_id: str) -> list[dict[str, Any]]:
    """Every version of the registered model ``model_id``, oldest first.

    Each item has the version's uuid, run, baseline, contributor and aliases, its ``created_at``
    (epoch ms) and run ``metrics``; the newest of two or more carries ``cumulative_improvement``.

    Raises:
        ModelNotFoundError: (a ``ValueError``) no registered model has that name.
        InvalidInputError: ``model_id`` is not a registered-model name.
    """
    if not isinstance(model_id, str) or not MODEL_NAME_RE.fullmatch(model_id):
        raise InvalidInputError(f"model_name may hold only letters, digits, '_', '.', '-'; got {model_id!r}")
    versions = sorted(reads.search_versions(store, f"name = '{model_id}'"), key=lambda v: int(v.version))
    if not versions:
        raise ModelNotFoundError(f"Model {model_id} not found")
    runs = reads.runs_by_id(store, (v.run_id for v in versions))
    entries = []
    for summary, version in zip(results.summaries(store, versions), versions, strict=True):
        run = runs.get(version.run_id or "")
        entry = compat.lineage_entry(summary, version, run.data.metrics if run else {})
        compat.fill_from_legacy_params(entry, run.data.params if run else {})
        entries.append(entry)
    if len(entries) > 1:
        entries[-1]["cumulative_improvement"] = compat.cumulative_improvement(
            entries, compat.baseline_metrics(store, entries)
        )
    return entries


def get_contributor_models(store: RegistryStore, contributor_address: str) -> list[dict[str, Any]]:
    """Every improved version attributed to the wallet ``contributor_address`` (any letter case).

    Each item has the version summary plus ``contributor_address`` (as asked), ``metrics`` (of its
    run) and ``created_at`` (a UTC ``datetime``). An address that is not ``0x`` + 40 hex characters
    finds nothing (``[]``, as before the upgrade) and never reaches MLflow.
    """
    if not is_contributor_address(contributor_address):
        logger.warning("get_contributor_models: not a wallet address: %r", contributor_address)
        return []
    versions = reads.search_versions(store, f"tags.{tags.TAG_CONTRIBUTOR} = '{contributor_address.lower()}'")
    versions.sort(key=lambda v: (v.name, int(v.version)))
    runs = reads.runs_by_id(store, (v.run_id for v in versions))
    items = []
    for summary, version in zip(results.summaries(store, versions), versions, strict=True):
        run = runs.get(version.run_id or "")
        items.append(
            compat.contributor_entry(
                summary,
                version,
                queried_address=contributor_address,
                metrics=run.data.metrics if run else {},
                run_start_ms=run.info.start_time if run else None,
            )
        )
    return items


def count_versions(store: RegistryStore) -> int:
    """How many model versions the store holds (for progress bars)."""
    return len(reads.search_versions(store, None))
