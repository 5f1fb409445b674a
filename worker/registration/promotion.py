"""Promotion: a version becomes its registered model's production version.

MLflow 3 has no stages; the ``production`` alias carries the promotion, and the version tag
``lifecycle_stage`` keeps the old stage names beside it (``Production``, and ``Archived`` for the
version that held the alias before), the values the pre-upgrade class and its API routes compare
against. Earlier releases of this registry wrote them lower-case: :func:`~worker.registration.tags.lifecycle_stage`
reads both, and the backfill rewrites them.
"""

from __future__ import annotations

from typing import Any

from hokusai_registry.contract import MODEL_NAME_RE
from hokusai_registry.errors import InvalidInputError
from worker.registration import compat, tags
from worker.registration.mlflow_errors import mlflow_boundary
from worker.registration.reads import RegistryStore


def promote_model_to_production(store: RegistryStore, model_name: str, version: str | int) -> dict[str, Any]:
    """Point the ``production`` alias of ``model_name`` at ``version``; tag it ``lifecycle_stage=Production``.

    The version that held the alias before gets ``lifecycle_stage=Archived`` (MLflow's retired
    stages did the same with ``archive_existing_versions``). A missing model or version raises
    MLflow's error before anything changes.

    Returns:
        ``{model_id, model_name, version, stage: "Production", alias, timestamp}``.
    Raises:
        InvalidInputError: ``model_name`` is not a registered-model name, or ``version`` not a positive integer.
    """
    if not isinstance(model_name, str) or not MODEL_NAME_RE.fullmatch(model_name):
        raise InvalidInputError(f"model_name is not a valid registered model name: {model_name!r}")
    if not str(version).isdigit():
        raise InvalidInputError(f"version must be a positive integer, got {version!r}")
    number = str(version)
    client = store.client
    store.activate()
    with mlflow_boundary(f"promoting {model_name}/{number}"):
        aliases = client.get_registered_model(model_name).aliases or {}
        client.get_model_version(model_name, number)  # a missing version fails before any change
        previous = aliases.get(tags.PRODUCTION_ALIAS)
        client.set_registered_model_alias(model_name, tags.PRODUCTION_ALIAS, number)
        client.set_model_version_tag(model_name, number, tags.TAG_LIFECYCLE_STAGE, tags.PRODUCTION_STAGE)
        if previous is not None and str(previous) != number:
            client.set_model_version_tag(model_name, str(previous), tags.TAG_LIFECYCLE_STAGE, tags.ARCHIVED_STAGE)
    return compat.promotion_result(model_name, number, tags.PRODUCTION_ALIAS)
