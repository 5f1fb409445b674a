"""Listing: every registered model's production version, in the pre-upgrade shape."""

from __future__ import annotations

import logging
from typing import Any

from mlflow.exceptions import MlflowException

from hokusai_registry.errors import RegistryUnavailableError
from worker.registration import compat, reads, tags
from worker.registration.reads import RegistryStore

logger = logging.getLogger(__name__)


def get_production_models(store: RegistryStore) -> list[dict[str, Any]]:
    """Every registered model's production version: ``{model_name, version, stage, alias, description, tags}``.

    As before the upgrade, a failure to read the registry is logged and gives ``[]``.
    """
    try:
        models = reads.registered_models(store)
    except (RegistryUnavailableError, MlflowException) as exc:
        logger.error("cannot list production models: %s", exc)
        return []
    return compat.production_entries(models, tags.PRODUCTION_ALIAS)
