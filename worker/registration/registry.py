"""``HokusaiModelRegistry``: register models in MLflow 3, and the one object its callers hold.

Each registration logs the model once (``model_log``, capturing MLflow's ``ModelInfo``), registers
it once (the ``ModelVersion`` the marketplace needs) and tags the version with its ``model_uuid``
so it can be found by it. Inputs are checked before any run starts, so a rejected registration
leaves nothing behind. This is the in-process API that training code calls directly and that the
queue worker calls for every job. Reading is not its role: lookups (``lookups``), listing
(``listing``), promotion (``promotion``) and the backfill (``backfill``) are functions over
:attr:`HokusaiModelRegistry.store`, and the class's methods of the same names delegate to them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LifecycleStage
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from hokusai_registry.contract import MODEL_TYPES
from hokusai_registry.errors import ConfigurationError, InvalidInputError
from hokusai_registry.flavors import flavor_for
from hokusai_registry.log import logging_kept
from hokusai_registry.redaction import redact_url
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.store_uris import is_tracking_server
from worker.registration import (
    backfill,
    compat,
    lineage,
    listing,
    lookups,
    model_inputs,
    model_log,
    promotion,
    reads,
    results,
    served_artifacts,
    signatures,
    tags,
)
from worker.registration.mlflow_errors import mlflow_boundary
from worker.registration.model_log import ModelToLog
from worker.registration.reads import RegistryStore
from worker.registration.store_setup import open_for_registry

__all__ = ["HokusaiModelRegistry", "ModelToLog"]

logger = logging.getLogger(__name__)


class HokusaiModelRegistry:
    """Register baseline and improved models; look them up by uuid, lineage or contributor.

    Args:
        tracking_uri: MLflow tracking and registry URI; both the fluent API and the client use
            it. Default: ``MLFLOW_TRACKING_URI``, else ``MLFLOW_SERVER_URL``, else the embedded
            sqlite store (logged at start-up, so a missing setting is not silent).
        settings: configuration; default: read from the environment.
        database_uri: the tracking server's own database (its backend store URI). Runs, logged
            models and versions are then written there directly, not through the server, which
            ``tracking_uri`` must be: it still creates the experiment and serves the artifacts.
            Workers pass ``TRACKING_DATABASE_URI``; see docs/scaling.md.
    """

    #: The model types, as the pre-upgrade class exposed them (a list).
    VALID_MODEL_TYPES: list[str] = list(MODEL_TYPES)

    def __init__(
        self, tracking_uri: str | None = None, *, settings: Settings | None = None, database_uri: str | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.tracking_uri = tracking_uri or self.settings.tracking_uri
        #: Where runs, logged models and versions are written and read: the tracking URI, or the
        #: tracking server's own database (``database_uri``, a worker's ``TRACKING_DATABASE_URI``).
        self.store_uri = database_uri or self.tracking_uri
        if database_uri and not is_tracking_server(self.tracking_uri):
            raise ConfigurationError(
                "a registry on the tracking database needs the tracking server's URL as its tracking URI "
                "(MLFLOW_TRACKING_URI): it creates experiments and serves artifacts"
            )
        source = "the tracking_uri argument" if tracking_uri else self.settings.tracking_uri_source
        level = logging.WARNING if source == "embedded default" else logging.INFO
        local = self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri
        shown = self.tracking_uri if local else redact_url(self.tracking_uri)
        if database_uri:
            shown = f"{redact_url(database_uri)}, the database of the tracking server {shown}"
        logger.log(level, "MLflow store: %s (from %s)", shown, source)
        if is_tracking_server(self.tracking_uri) and (self.settings.served_artifacts_destination or database_uri):
            server = self.tracking_uri if database_uri else None
            served_artifacts.install(self.settings.served_artifacts_destination, server_url=server)
        reads.activate(self.store_uri)
        # a local store is opened here, created once under a lock first when new (store_setup);
        # MLflow 3.4 then reconfigures logging (log.logging_kept)
        with mlflow_boundary("opening the MLflow store"), logging_kept():
            open_for_registry(self.store_uri, server_owned=database_uri is not None,
                              artifact_root=self.settings.artifact_location_for(self.tracking_uri))  # fmt: skip
            self.client = MlflowClient(tracking_uri=self.store_uri, registry_uri=self.store_uri)
        #: What lookups, listing, promotion and the backfill read and write.
        self.store = RegistryStore(self.client, self.store_uri)
        #: Creates the experiment: through the server, which gives it the server's artifact location.
        self._experiment_client = MlflowClient(tracking_uri=self.tracking_uri) if database_uri else self.client
        self._experiment_id: str | None = None
        #: Registered models this object saw exist: a new version of one is a single request.
        self._known_models: set[str] = set()

    # ------------------------------------------------------------------ registration API
    def register_baseline(
        self,
        model: Any,
        model_type: str,
        metadata: Mapping[str, Any] | None = None,
        signature: Any = None,
        input_example: Any = None,
        code_paths: list[str] | None = None,
        *,
        pip_requirements: list[str] | None = None,
    ) -> dict[str, Any]:
        """Log and register a baseline model as ``hokusai_{model_type}_baseline``.

        Returns:
            The registration result (``model_id``, ``version``, ``model_uuid``, ``model_uri``, ...).
        Raises:
            InvalidInputError: (a ``ValueError``) bad model, type, metadata; ``SignatureError`` for a
                malformed signature or an example that does not match it. Nothing is logged then.
            RegistryUnavailableError: MLflow could not be reached.
        """
        model_inputs.check_model(model)
        model_inputs.check_model_type(model_type)
        return self._register_object(
            model,
            model_name=tags.baseline_model_name(model_type),
            model_type=model_type,
            is_baseline=True,
            metadata=metadata,
            signature=signature,
            input_example=input_example,
            code_paths=code_paths,
            pip_requirements=pip_requirements,
        )

    def register_improved_model(
        self,
        model: Any,
        baseline_id: str,
        delta_metrics: Mapping[str, float],
        contributor: str,
        signature: Any = None,
        input_example: Any = None,
        code_paths: list[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        pip_requirements: list[str] | None = None,
    ) -> dict[str, Any]:
        """Log and register a model improved on ``baseline_id`` (``<name>_baseline/<version>``) by ``contributor``.

        Registered as ``<name>_improved``; the version is tagged with the contributor and the
        baseline id. The model type is the one the baseline name implies
        (``hokusai_<model_type>_baseline``), else the baseline version's ``model_type`` tag (or
        its run's ``model_type`` param). Raises as :meth:`register_baseline`.
        """
        model_inputs.check_model(model)
        ref = model_inputs.parse_baseline(baseline_id)
        model_inputs.check_contributor(contributor)
        deltas = model_inputs.check_delta_metrics(delta_metrics)
        model_type = ref.model_type or compat.baseline_model_type(self.store, ref)
        result = self._register_object(
            model,
            model_name=ref.improved_name,
            model_type=model_type,
            is_baseline=False,
            metadata=metadata,
            signature=signature,
            input_example=input_example,
            code_paths=code_paths,
            pip_requirements=pip_requirements,
            baseline_id=baseline_id,
            contributor=contributor,
            metrics=deltas,
        )
        result.update(baseline_id=baseline_id, contributor=contributor, delta_metrics=deltas)
        return result

    def register_logged(
        self,
        model: ModelToLog | None,
        *,
        model_name: str,
        model_type: str,
        is_baseline: bool,
        metadata: Mapping[str, Any] | None,
        signature: Any,
        input_example: Any,
        git: Mapping[str, str] | None = None,
        baseline_id: str | None = None,
        contributor: str | None = None,
        extra_version_tags: Mapping[str, str] | None = None,
        extra_logged_model_tags: Mapping[str, str] | None = None,
        extra_run_tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        existing_model_info: ModelInfo | None = None,
    ) -> dict[str, Any]:
        """The one registration pipeline: validate → run → ``log_model`` → ``register_model`` → tag.

        ``model`` is what gets logged. Passing ``existing_model_info`` instead (and ``None``)
        skips logging and registers that already-logged model (the queue worker's recovery
        after a crash between the two steps). An improvement names its ``baseline_id`` and
        ``contributor``: the run param keeps the address as given, the version tag lower-cases it.
        """
        model_inputs.check_model_type(model_type)
        meta = model_inputs.check_metadata(metadata, self.settings.max_metadata_bytes)
        parsed = signatures.parse_signature(signature)
        if input_example is not None and parsed is not None:
            signatures.check_example(input_example, parsed)
        example = signatures.example_frame(input_example) if input_example is not None else None
        lineage_tags = {key: value for key, value in (git or {}).items() if value}
        run_params = model_inputs.legacy_run_params(
            model_type=model_type,
            is_baseline=is_baseline,
            metadata=meta,
            baseline_id=baseline_id,
            contributor=contributor,
            improvement_count=None if is_baseline else len(metrics or {}),
        )
        version_tags = {
            tags.TAG_MODEL_TYPE: model_type,
            tags.TAG_IS_BASELINE: tags.TRUE if is_baseline else tags.FALSE,
            **{tags.VERSION_GIT_TAGS[key]: value for key, value in lineage_tags.items()},
            **({tags.TAG_BASELINE_ID: baseline_id} if baseline_id is not None else {}),
            **({tags.TAG_CONTRIBUTOR: contributor.lower()} if contributor is not None else {}),
            **(extra_version_tags or {}),
        }

        self._activate()
        with mlflow_boundary(f"registering {model_name}"):
            if existing_model_info is None:
                assert model is not None, "register_logged needs a model or existing_model_info"
                model_info = self._log_in_run(
                    model,
                    run_name=model_name,
                    run_tags={
                        **{tags.RUN_GIT_TAGS[key]: value for key, value in lineage_tags.items()},
                        **(extra_run_tags or {}),
                    },
                    run_params=run_params,
                    params=model_inputs.searchable_params(meta),
                    model_tags=dict(extra_logged_model_tags or {}),
                    metrics=metrics,
                    log_kwargs={
                        "signature": parsed,
                        "input_example": example if model.log_input_example else None,
                        "metadata": meta,
                    },
                )
            else:
                model_info = existing_model_info
                model_log.log_missing_params(self.store, model_info.run_id, run_params)
            version = self._create_version(
                model_info, model_name, version_tags={tags.TAG_MODEL_UUID: model_info.model_uuid, **version_tags}
            )
        logger.info(
            "registered %s version %s (model_uuid=%s)",
            version.name,
            version.version,
            model_info.model_uuid,
            extra={"model_uuid": model_info.model_uuid, "version": str(version.version)},
        )
        return results.registration_result(
            model_info, version, model_type=model_type, is_baseline=is_baseline, metadata=meta
        )

    def _create_version(self, model_info: ModelInfo, model_name: str, *, version_tags: dict[str, str]) -> ModelVersion:
        """One new version of ``model_name`` from ``model_info``, tags included.

        ``mlflow.register_model`` first tries to create the registered model (one request, refused
        once it exists) and afterwards reads the LoggedModel to append the version to its
        ``mlflow.modelVersions`` tag (the UI's link). For a name already seen here the version is
        created directly and the tag written in one request (the model was just logged, or resumed
        because no version of it exists, so the list holds only this version); should the
        registered model have been deleted since, ``register_model`` does it all.
        """
        if model_name in self._known_models:
            try:
                version = self.client.create_model_version(
                    model_name, source=model_info.model_uri, tags=version_tags, model_id=model_info.model_id
                )
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self._known_models.discard(model_name)
            else:
                link = {MLFLOW_MODEL_VERSIONS: json.dumps([{"name": version.name, "version": version.version}])}
                # The tracking client's own call: MlflowClient's reads the model first (one more request)
                # only to word its error, and this model was logged moments ago.
                tracking = getattr(self.client, "_tracking_client", None) or self.client
                tracking.set_logged_model_tags(model_info.model_id, link)
                return version
        version = mlflow.register_model(model_info.model_uri, model_name, tags=version_tags)
        self._known_models.add(model_name)
        return version

    # ------------------------------------------------------------------ reading: see lookups, listing, promotion
    def get_model_by_uuid(self, model_uuid: str) -> dict[str, Any] | None:
        """:func:`worker.registration.lookups.get_model_by_uuid`."""
        return lookups.get_model_by_uuid(self.store, model_uuid)

    def describe_version(self, version: ModelVersion) -> dict[str, Any]:
        """:func:`worker.registration.lookups.describe_version`."""
        return lookups.describe_version(self.store, version)

    def get_model_lineage(self, model_id: str) -> list[dict[str, Any]]:
        """:func:`worker.registration.lookups.get_model_lineage`."""
        return lookups.get_model_lineage(self.store, model_id)

    def get_contributor_models(self, contributor_address: str) -> list[dict[str, Any]]:
        """:func:`worker.registration.lookups.get_contributor_models`."""
        return lookups.get_contributor_models(self.store, contributor_address)

    def find_version_by_tag(self, key: str, value: str) -> ModelVersion | None:
        """:func:`worker.registration.lookups.find_version_by_tag`."""
        return lookups.find_version_by_tag(self.store, key, value)

    def find_version(self, model_name: str, version: str) -> ModelVersion | None:
        """:func:`worker.registration.reads.find_version`."""
        return reads.find_version(self.store, model_name, version)

    def count_versions(self) -> int:
        """:func:`worker.registration.lookups.count_versions`."""
        return lookups.count_versions(self.store)

    def promote_model_to_production(self, model_name: str, version: str | int) -> dict[str, Any]:
        """:func:`worker.registration.promotion.promote_model_to_production`."""
        return promotion.promote_model_to_production(self.store, model_name, version)

    def get_production_models(self) -> list[dict[str, Any]]:
        """:func:`worker.registration.listing.get_production_models`."""
        return listing.get_production_models(self.store)

    def backfill_model_uuids(
        self,
        *,
        dry_run: bool = False,
        on_progress: Callable[[ModelVersion], None] | None = None,
    ) -> dict[str, Any]:
        """:func:`worker.registration.backfill.backfill`: versions registered before the upgrade, brought up to date."""
        return backfill.backfill(self.store, dry_run=dry_run, on_progress=on_progress)

    # ------------------------------------------------------------------ internals
    def _activate(self) -> None:
        self.store.activate()

    def experiment_id(self) -> str:
        """The product's experiment: ``MLFLOW_EXPERIMENT_ID``, else ``MLFLOW_EXPERIMENT_NAME`` (created on first use).

        Creating is safe when workers race to do it. A configured id must name an active experiment.

        Raises:
            ConfigurationError: ``MLFLOW_EXPERIMENT_ID`` names no experiment, or a deleted one.
        """
        if self._experiment_id is None:
            configured = self.settings.mlflow_experiment_id
            with mlflow_boundary("opening the experiment"):
                if configured is not None:
                    self._experiment_id = self._configured_experiment(configured)
                else:
                    self._experiment_id = self._named_experiment(self.settings.mlflow_experiment_name)
        return self._experiment_id

    def _configured_experiment(self, experiment_id: str) -> str:
        try:
            experiment = self.client.get_experiment(experiment_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            experiment = None
        if experiment is None or experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            state = "no such experiment" if experiment is None else "the experiment is deleted"
            raise ConfigurationError(f"MLFLOW_EXPERIMENT_ID={experiment_id}: {state} in {redact_url(self.store_uri)}")
        return str(experiment.experiment_id)

    def _named_experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(
                self._experiment_client.create_experiment(
                    name, artifact_location=self.settings.artifact_location_for(self.tracking_uri)
                )
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = self.client.get_experiment_by_name(name)
        assert experiment is not None, f"experiment {name!r} exists, yet cannot be read"
        return str(experiment.experiment_id)

    def _register_object(
        self,
        model: Any,
        *,
        pip_requirements: list[str] | None,
        code_paths: list[str] | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        flavor = flavor_for(model)
        requirements = list(pip_requirements) if pip_requirements else flavor.default_requirements()
        paths = [str(Path(p)) for p in code_paths] if code_paths else None
        if paths:
            missing = [p for p in paths if not Path(p).exists()]
            if missing:
                raise InvalidInputError(f"code_paths do not exist: {missing}")

        to_log = ModelToLog(
            flavor.module, {flavor.model_keyword: model, "pip_requirements": requirements, "code_paths": paths}
        )
        return self.register_logged(to_log, git=lineage.git_lineage(paths), **kwargs)

    def _log_in_run(self, model: ModelToLog, **kwargs: Any) -> ModelInfo:
        """:func:`worker.registration.model_log.log_in_run`, in this registry's experiment."""
        return model_log.log_in_run(self.client, self.experiment_id(), model, **kwargs)
