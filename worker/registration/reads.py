"""The registry's store and its reads: a client on one MLflow store, and the few reads everything shares.

:class:`RegistryStore` is the small public interface that lookups, listing, promotion, the
compatibility shapes and the backfill take (``HokusaiModelRegistry.store`` is one): an
``MlflowClient`` on the store and the store's URI. The reads here page through every result and
turn MLflow's "does not exist" into ``None`` (or absence); an unreachable store raises
``RegistryUnavailableError`` (``mlflow_errors.mlflow_boundary``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from worker.registration.mlflow_errors import mlflow_boundary

#: MLflow's largest page.
PAGE_SIZE = 1000
_MISSING = "RESOURCE_DOES_NOT_EXIST"


@dataclass(frozen=True)
class RegistryStore:
    """One MLflow store: ``client`` reads and writes it, ``uri`` is its tracking and registry URI."""

    client: MlflowClient
    uri: str

    def activate(self) -> None:
        """:func:`activate` this store."""
        activate(self.uri)


def activate(uri: str) -> None:
    """Point MLflow's global URIs at the store ``uri``: its SQL registry resolves ``models:/`` sources through them."""
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    if mlflow.get_registry_uri() != uri:
        mlflow.set_registry_uri(uri)


def search_versions(store: RegistryStore, filter_string: str | None) -> list[ModelVersion]:
    """Every model version ``filter_string`` matches (all of them for None), every page read.

    ``filter_string`` is pasted into MLflow's filter as is: callers match its values against strict
    patterns first (MLflow filters have no escaping).
    """
    store.activate()
    found: list[ModelVersion] = []
    token: str | None = None
    with mlflow_boundary("searching model versions"):
        while True:
            page = store.client.search_model_versions(filter_string, max_results=PAGE_SIZE, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found


def registered_models(store: RegistryStore) -> list[RegisteredModel]:
    """Every registered model, every page read."""
    store.activate()
    models: list[RegisteredModel] = []
    token: str | None = None
    with mlflow_boundary("listing registered models"):
        while True:
            page = store.client.search_registered_models(max_results=PAGE_SIZE, page_token=token)
            models.extend(page)
            token = page.token
            if not token:
                return models


def find_version(store: RegistryStore, model_name: str, version: str) -> ModelVersion | None:
    """The model version ``model_name``/``version``, or None when MLflow has no such version."""
    store.activate()
    with mlflow_boundary(f"reading {model_name}/{version}"):
        try:
            return store.client.get_model_version(model_name, version)
        except MlflowException as exc:
            if exc.error_code != _MISSING:
                raise
            return None


def runs_by_id(store: RegistryStore, run_ids: Iterable[str | None]) -> dict[str, Run]:
    """``run_id -> Run`` for the runs that still exist (a deleted run is simply absent; None ids are skipped)."""
    found: dict[str, Run] = {}
    with mlflow_boundary("reading runs"):
        for run_id in {r for r in run_ids if r}:
            try:
                found[run_id] = store.client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code != _MISSING:
                    raise
    return found


def run_of(store: RegistryStore, run_id: str | None) -> Run | None:
    """The run ``run_id``, or None when there is none (no id, or a deleted run)."""
    return runs_by_id(store, [run_id]).get(run_id or "") if run_id else None


def aliases_by_version(store: RegistryStore, model_names: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """``(model_name, version) -> sorted aliases`` of these models (a search returns versions without aliases)."""
    aliases: dict[tuple[str, str], list[str]] = {}
    with mlflow_boundary("reading model aliases"):
        for name in sorted(set(model_names)):
            for alias, number in (store.client.get_registered_model(name).aliases or {}).items():
                aliases.setdefault((name, str(number)), []).append(alias)
    return {key: sorted(found) for key, found in aliases.items()}
