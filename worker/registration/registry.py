"""``HokusaiModelRegistry``: register models in MLflow 3 and find them again by ``model_uuid``.

Each registration logs the model once (capturing MLflow's ``ModelInfo``), registers it once
(``mlflow.register_model`` → the ``ModelVersion`` the marketplace needs) and tags the version
with its ``model_uuid`` so it can be found by it. Inputs are checked before any run starts, so
a rejected registration leaves nothing behind. This is the in-process API that training code
calls directly and that the queue worker calls for every job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, Metric, Param, RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from hokusai_registry.contract import MODEL_TYPES, BaselineRef
from hokusai_registry.errors import (
    ConfigurationError,
    InvalidInputError,
    ModelNotFoundError,
    RegistryUnavailableError,
)
from hokusai_registry.flavors import flavor_for
from hokusai_registry.log import logging_kept
from hokusai_registry.redaction import redact_url
from hokusai_registry.settings import Settings, get_settings, is_tracking_server
from worker.registration import compat, lineage, model_inputs, served_artifacts, signatures
from worker.registration.mlflow_errors import mlflow_boundary
from worker.registration.store_setup import default_artifact_location, open_for_registry

logger = logging.getLogger(__name__)

PRODUCTION_ALIAS = "production"
MODEL_ARTIFACT_NAME = "model"

# Model-version tags this registry writes.
TAG_MODEL_UUID = "model_uuid"
TAG_MODEL_TYPE = "model_type"
TAG_IS_BASELINE = "is_baseline"
TAG_CONTRIBUTOR = "contributor"
TAG_BASELINE_ID = "baseline_model_id"
TAG_JOB_ID = "job_id"


@dataclass(frozen=True)
class ModelToLog:
    """What a registration logs: ``flavor`` saves it, given ``save_kwargs``.

    ``flavor`` is what ``mlflow.models.Model.log`` takes: a flavor module (``mlflow.sklearn``)
    or an object with the same ``save_model(path, mlflow_model, **kwargs)``.
    """

    flavor: Any
    save_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Log the registration's input example with the model (a copied model keeps its own).
    log_input_example: bool = True


class _RunStampedFlavor:
    """``flavor``, writing ``run_id`` into the MLmodel it saves.

    ``Model.log`` writes a run id only for an active run, and then reads that whole run twice
    (see ``HokusaiModelRegistry._log_in_run``); the registry's run is never made active.
    """

    def __init__(self, flavor: Any, run_id: str) -> None:
        self.flavor = flavor
        self.run_id = run_id

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        mlflow_model.run_id = self.run_id
        self.flavor.save_model(path=path, mlflow_model=mlflow_model, **kwargs)


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
        self._activate()
        # a local store is opened here, created once under a lock first when new (store_setup);
        # MLflow 3.4 then reconfigures logging (log.logging_kept)
        with mlflow_boundary("opening the MLflow store"), logging_kept():
            open_for_registry(self.store_uri, server_owned=database_uri is not None,
                              artifact_root=default_artifact_location(self.tracking_uri, self.settings))  # fmt: skip
            self.client = MlflowClient(tracking_uri=self.store_uri, registry_uri=self.store_uri)
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
            model_name=f"hokusai_{model_type}_baseline",
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
        model_type = ref.model_type or self._baseline_model_type(ref)
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
            extra_version_tags={TAG_CONTRIBUTOR: contributor.lower(), TAG_BASELINE_ID: baseline_id},
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
        extra_version_tags: Mapping[str, str] | None = None,
        extra_logged_model_tags: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        existing_model_info: ModelInfo | None = None,
    ) -> dict[str, Any]:
        """The one registration pipeline: validate → run → ``log_model`` → ``register_model`` → tag.

        ``model`` is what gets logged. Passing ``existing_model_info`` instead (and ``None``)
        skips logging and registers that already-logged model (the queue worker's recovery
        after a crash between the two steps).
        """
        model_inputs.check_model_type(model_type)
        meta = model_inputs.check_metadata(metadata, self.settings.max_metadata_bytes)
        parsed = signatures.parse_signature(signature)
        if input_example is not None and parsed is not None:
            signatures.check_example(input_example, parsed)
        example = signatures.example_frame(input_example) if input_example is not None else None
        run_tags = {lineage.RUN_TAGS[key]: value for key, value in (git or {}).items() if value}
        extra = dict(extra_version_tags or {})
        run_params = model_inputs.legacy_run_params(
            model_type=model_type,
            is_baseline=is_baseline,
            metadata=meta,
            baseline_id=extra.get(TAG_BASELINE_ID),
            contributor=extra.get(TAG_CONTRIBUTOR),
            improvement_count=None if is_baseline else len(metrics or {}),
        )
        version_tags = {
            TAG_MODEL_TYPE: model_type,
            TAG_IS_BASELINE: "true" if is_baseline else "false",
            **{lineage.VERSION_TAGS[key]: value for key, value in (git or {}).items() if value},
            **(extra_version_tags or {}),
        }

        self._activate()
        with mlflow_boundary(f"registering {model_name}"):
            if existing_model_info is None:
                assert model is not None, "register_logged needs a model or existing_model_info"
                model_info = self._log_in_run(
                    model,
                    run_name=model_name,
                    run_tags=run_tags,
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
                self._log_missing_params(model_info.run_id, run_params)
            version = self._create_version(
                model_info, model_name, tags={TAG_MODEL_UUID: model_info.model_uuid, **version_tags}
            )
        logger.info(
            "registered %s version %s (model_uuid=%s)",
            version.name,
            version.version,
            model_info.model_uuid,
            extra={"model_uuid": model_info.model_uuid, "version": str(version.version)},
        )
        return self._result(model_info, version, model_type=model_type, is_baseline=is_baseline, metadata=meta)

    def _create_version(self, model_info: ModelInfo, model_name: str, *, tags: dict[str, str]) -> ModelVersion:
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
                    model_name, source=model_info.model_uri, tags=tags, model_id=model_info.model_id
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
        version = mlflow.register_model(model_info.model_uri, model_name, tags=tags)
        self._known_models.add(model_name)
        return version

    # ------------------------------------------------------------------ lookups
    def get_model_by_uuid(self, model_uuid: str) -> dict[str, Any] | None:
        """The registration result (plus ``tags``) of the version carrying ``model_uuid``, or None.

        Raises:
            InvalidInputError: ``model_uuid`` is not an MLflow model id (``m-<32 hex>``); it is never
                pasted into a filter string then.
        """
        if not isinstance(model_uuid, str) or not model_inputs.MODEL_UUID_RE.fullmatch(model_uuid):
            raise InvalidInputError(f"model_uuid must look like 'm-' + 32 hex characters, got {model_uuid!r}")
        versions = self._search_versions(f"tags.{TAG_MODEL_UUID} = '{model_uuid}'")
        if not versions:
            return None
        version = min(versions, key=lambda v: int(v.version))
        return self.describe_version(version)

    def describe_version(self, version: ModelVersion) -> dict[str, Any]:
        """Full result for a registered version, read back from its tags and ``ModelInfo``.

        The model is read through ``models:/<model_uuid>`` when it is an MLflow 3 LoggedModel,
        else through the version's own source (``runs:/...`` of versions registered before).
        """
        tags = dict(version.tags or {})
        self._activate()
        uuid = tags.get(TAG_MODEL_UUID) or _model_id_from_source(version.source)
        uri = f"models:/{uuid}" if uuid and uuid.startswith("m-") else str(version.source)
        with mlflow_boundary(f"reading model {version.name}/{version.version}"):
            info = mlflow.models.get_model_info(uri)
        result = self._result(
            info,
            version,
            model_type=tags.get(TAG_MODEL_TYPE, ""),
            is_baseline=tags.get(TAG_IS_BASELINE) == "true",
            metadata=info.metadata or {},
        )
        result["model_uuid"] = uuid or info.model_uuid
        result["tags"] = tags
        if TAG_BASELINE_ID in tags:
            result["baseline_id"] = tags[TAG_BASELINE_ID]
            result["contributor"] = tags.get(TAG_CONTRIBUTOR)
        return result

    def get_model_lineage(self, model_id: str) -> list[dict[str, Any]]:
        """Every version of the registered model ``model_id``, oldest first.

        Each item has the version's uuid, run, baseline, contributor and aliases, its
        ``created_at`` (epoch ms) and run ``metrics``; the newest of two or more carries
        ``cumulative_improvement``.

        Raises:
            ModelNotFoundError: (a ``ValueError``) no registered model has that name.
            InvalidInputError: ``model_id`` is not a registered-model name.
        """
        if not isinstance(model_id, str) or not model_inputs.MODEL_NAME_RE.fullmatch(model_id):
            raise InvalidInputError(f"model_name may hold only letters, digits, '_', '.', '-'; got {model_id!r}")
        versions = sorted(self._search_versions(f"name = '{model_id}'"), key=lambda v: int(v.version))
        if not versions:
            raise ModelNotFoundError(f"Model {model_id} not found")
        runs = self._runs(v.run_id for v in versions)
        entries = []
        for summary, version in zip(self._summaries(versions), versions, strict=True):
            run = runs.get(version.run_id or "")
            entry = compat.lineage_entry(summary, version, run.data.metrics if run else {})
            compat.fill_from_legacy_params(entry, run.data.params if run else {})
            entries.append(entry)
        if len(entries) > 1:
            entries[-1]["cumulative_improvement"] = compat.cumulative_improvement(
                entries, self._baseline_metrics(entries)
            )
        return entries

    def get_contributor_models(self, contributor_address: str) -> list[dict[str, Any]]:
        """Every improved version attributed to the wallet ``contributor_address`` (any letter case).

        Each item has the version summary plus ``contributor_address``, ``metrics`` (of its run)
        and ``created_at``. An address that is not ``0x`` + 40 hex characters finds nothing
        (``[]``, as before the upgrade) and never reaches MLflow.
        """
        if not isinstance(contributor_address, str) or not model_inputs.CONTRIBUTOR_RE.fullmatch(contributor_address):
            logger.warning("get_contributor_models: not a wallet address: %r", contributor_address)
            return []
        versions = self._search_versions(f"tags.{TAG_CONTRIBUTOR} = '{contributor_address.lower()}'")
        versions.sort(key=lambda v: (v.name, int(v.version)))
        runs = self._runs(v.run_id for v in versions)
        items = []
        for summary, version in zip(self._summaries(versions), versions, strict=True):
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

    def find_version_by_tag(self, key: str, value: str) -> ModelVersion | None:
        """The oldest version whose tag ``key`` equals ``value`` (both validated by the caller)."""
        versions = self._search_versions(f"tags.{key} = '{value}'")
        return min(versions, key=lambda v: int(v.version)) if versions else None

    def find_version(self, model_name: str, version: str) -> ModelVersion | None:
        """The model version ``model_name``/``version``, or None when MLflow has no such version."""
        self._activate()
        with mlflow_boundary(f"reading {model_name}/{version}"):
            try:
                return self.client.get_model_version(model_name, version)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                return None

    def promote_model_to_production(self, model_name: str, version: str | int) -> dict[str, Any]:
        """Point the ``production`` alias of ``model_name`` at ``version``.

        The version's ``lifecycle_stage`` tag becomes ``production``; the version that held the
        alias before gets ``archived`` (MLflow's retired stages did the same).

        Returns:
            ``{model_id, model_name, version, stage: "Production", alias, timestamp}``.
        """
        if not isinstance(model_name, str) or not model_inputs.MODEL_NAME_RE.fullmatch(model_name):
            raise InvalidInputError(f"model_name is not a valid registered model name: {model_name!r}")
        if not str(version).isdigit():
            raise InvalidInputError(f"version must be a positive integer, got {version!r}")
        number = str(version)
        self._activate()
        with mlflow_boundary(f"promoting {model_name}/{number}"):
            aliases = self.client.get_registered_model(model_name).aliases or {}
            self.client.get_model_version(model_name, number)  # a missing version fails before any change
            previous = aliases.get(PRODUCTION_ALIAS)
            self.client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, number)
            self.client.set_model_version_tag(model_name, number, compat.TAG_LIFECYCLE_STAGE, "production")
            if previous is not None and str(previous) != number:
                self.client.set_model_version_tag(model_name, str(previous), compat.TAG_LIFECYCLE_STAGE, "archived")
        return compat.promotion_result(model_name, number, PRODUCTION_ALIAS)

    def get_production_models(self) -> list[dict[str, Any]]:
        """Every registered model's production version: ``{model_name, version, stage, description, tags}``.

        As before the upgrade, a failure to read the registry is logged and gives ``[]``.
        """
        self._activate()
        models: list[Any] = []
        token: str | None = None
        try:
            with mlflow_boundary("listing registered models"):
                while True:
                    page = self.client.search_registered_models(max_results=1000, page_token=token)
                    models.extend(page)
                    token = page.token
                    if not token:
                        break
        except (RegistryUnavailableError, MlflowException) as exc:
            logger.error("cannot list production models: %s", exc)
            return []
        return compat.production_entries(models, PRODUCTION_ALIAS)

    # ------------------------------------------------------------------ upgrade path
    def backfill_model_uuids(
        self,
        *,
        dry_run: bool = False,
        on_progress: Callable[[ModelVersion], None] | None = None,
    ) -> dict[str, Any]:
        """Bring versions registered before the upgrade up to date (see ``worker.registration.backfill``)."""
        from worker.registration.backfill import backfill

        return backfill(self, dry_run=dry_run, on_progress=on_progress)

    def count_versions(self) -> int:
        """How many model versions the registry holds (for progress bars)."""
        return len(self._search_versions(None))

    # ------------------------------------------------------------------ internals
    def _activate(self) -> None:
        # The SQL registry resolves models:/ sources through the *global* tracking URI.
        if mlflow.get_tracking_uri() != self.store_uri:
            mlflow.set_tracking_uri(self.store_uri)
        if mlflow.get_registry_uri() != self.store_uri:
            mlflow.set_registry_uri(self.store_uri)

    def experiment_id(self) -> str:
        """The product's experiment, created on first use (safe when workers race to create it)."""
        if self._experiment_id is None:
            name = self.settings.mlflow_experiment_name
            with mlflow_boundary("opening the experiment"):
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    try:
                        self._experiment_id = self._experiment_client.create_experiment(
                            name, artifact_location=default_artifact_location(self.tracking_uri, self.settings)
                        )
                    except MlflowException as exc:
                        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                            raise
                        experiment = self.client.get_experiment_by_name(name)
                if experiment is not None:
                    self._experiment_id = experiment.experiment_id
        assert self._experiment_id is not None
        return self._experiment_id

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

    def _log_in_run(
        self,
        model: ModelToLog,
        *,
        run_name: str,
        run_tags: dict[str, str],
        run_params: dict[str, str],
        params: dict[str, str],
        model_tags: dict[str, str],
        metrics: Mapping[str, float] | None,
        log_kwargs: dict[str, Any],
    ) -> ModelInfo:
        """Create a run in the product's experiment, log the model as its output, end the run.

        The run is created through the client and never made active: for an active run,
        ``Model.log`` reads the whole run twice (to copy its params into the LoggedModel and to
        link its metrics), 2 of a queued job's 11 requests to a tracking server and about 6 ms on
        sqlite. Here the LoggedModel is created with its params, tags and source run;
        ``Model.log`` fills it (the run id written into its MLmodel); the run then gets the model
        as its output, and its metrics (linked to the model) and params in one batch.

        Raises:
            InvalidInputError: an MLflow run is active in this thread (``mlflow.start_run``):
                ``Model.log`` would attach the model to it.
        """
        active = mlflow.active_run()
        if active is not None:
            raise InvalidInputError(
                f"an MLflow run is active in this thread ({active.info.run_id}): end it before registering; "
                "the registry logs each model in a run of its own"
            )
        experiment_id = self.experiment_id()
        # What mlflow.start_run records (user, source), except the git state of the *calling
        # script*: lineage is the training code's repository (run_tags) or nothing.
        context = {k: v for k, v in run_context.resolve_tags().items() if k not in lineage.RUN_TAGS.values()}
        run = self.client.create_run(experiment_id, run_name=run_name, tags={**context, **run_tags})
        run_id = run.info.run_id
        try:
            logged = mlflow.initialize_logged_model(
                name=MODEL_ARTIFACT_NAME,
                source_run_id=run_id,
                tags=model_tags or None,
                params=params or None,
                experiment_id=experiment_id,
            )
            info = mlflow.models.Model.log(
                artifact_path=None,  # deprecated in 3.x in favour of name=, but still positional
                flavor=_RunStampedFlavor(model.flavor, run_id),
                model_id=logged.model_id,
                **log_kwargs,
                **model.save_kwargs,
            )
            self.client.log_outputs(run_id, [LoggedModelOutput(info.model_id, step=0)])
            now = int(time.time() * 1000)
            linked = [Metric(k, float(v), now, 0, model_id=info.model_id) for k, v in (metrics or {}).items()]
            # The pre-upgrade names, on the run, for mlflow.search_runs (MLflow takes 100 per request).
            items = [Param(k, v) for k, v in run_params.items()]
            batches = [items[start : start + 100] for start in range(0, len(items), 100)] or [[]]
            for index, batch in enumerate(batches):
                metrics_now = linked if index == 0 else []
                if batch or metrics_now:
                    self.client.log_batch(run_id, metrics=metrics_now, params=batch)
        except BaseException:
            try:
                self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            except Exception as exc:  # the error that stopped the run matters more
                logger.warning("could not mark run %s FAILED: %s", run_id, exc)
            raise
        self.client.set_terminated(run_id)
        return info

    def _log_missing_params(self, run_id: str | None, run_params: dict[str, str]) -> None:
        """Resuming a logged model: the run params a crash may have cut off (params never change)."""
        run = self._runs([run_id]).get(run_id or "") if run_id else None
        if run is None:
            return
        missing = [Param(key, value) for key, value in run_params.items() if key not in run.data.params]
        for start in range(0, len(missing), 100):
            self.client.log_batch(run.info.run_id, params=missing[start : start + 100])

    def _search_versions(self, filter_string: str | None) -> list[ModelVersion]:
        self._activate()
        found: list[ModelVersion] = []
        token: str | None = None
        with mlflow_boundary("searching model versions"):
            while True:
                page = self.client.search_model_versions(filter_string, max_results=1000, page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    return found

    def _runs(self, run_ids: Any) -> dict[str, Any]:
        """``run_id -> Run`` for the runs that still exist (a deleted run is simply absent)."""
        found: dict[str, Any] = {}
        with mlflow_boundary("reading runs"):
            for run_id in {r for r in run_ids if r}:
                try:
                    found[run_id] = self.client.get_run(run_id)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
        return found

    def _baseline_metrics(self, entries: list[dict[str, Any]]) -> dict[str, float] | None:
        return compat.baseline_metrics(self, entries)

    def _baseline_model_type(self, ref: BaselineRef) -> str:
        return compat.baseline_model_type(self, ref)

    def _result(
        self,
        info: ModelInfo,
        version: ModelVersion,
        *,
        model_type: str,
        is_baseline: bool,
        metadata: Mapping[str, Any],
    ) -> dict[str, Any]:
        return {
            "model_id": f"{version.name}/{version.version}",
            "model_name": version.name,
            "version": str(version.version),
            "model_type": model_type,
            "is_baseline": is_baseline,
            "run_id": version.run_id or info.run_id,
            "registration_timestamp": _utc_iso(version.creation_timestamp),
            "model_uri": info.model_uri,
            "model_uuid": info.model_uuid,
            "artifact_path": info.artifact_path,
            "flavors": sorted(info.flavors or {}),
            "signature": signatures.signature_to_json(info.signature),
            "mlflow_version": info.mlflow_version,
            "metadata": dict(metadata),
        }

    def _summaries(self, versions: list[ModelVersion]) -> list[dict[str, Any]]:
        # Searches return versions without their aliases; read them once per registered model.
        aliases: dict[tuple[str, str], list[str]] = {}
        with mlflow_boundary("reading model aliases"):
            for name in sorted({v.name for v in versions}):
                for alias, number in (self.client.get_registered_model(name).aliases or {}).items():
                    aliases.setdefault((name, str(number)), []).append(alias)
        return [self._summary(v, sorted(aliases.get((v.name, str(v.version)), []))) for v in versions]

    @staticmethod
    def _summary(version: ModelVersion, aliases: list[str]) -> dict[str, Any]:
        tags = dict(version.tags or {})
        return {
            "model_id": f"{version.name}/{version.version}",
            "model_name": version.name,
            "version": str(version.version),
            "run_id": version.run_id,
            "model_uuid": tags.get(TAG_MODEL_UUID) or _model_id_from_source(version.source),
            "model_uri": version.source,
            "model_type": tags.get(TAG_MODEL_TYPE),
            "is_baseline": tags.get(TAG_IS_BASELINE) == "true",
            "baseline_id": tags.get(TAG_BASELINE_ID),
            "contributor": tags.get(TAG_CONTRIBUTOR),
            "registration_timestamp": _utc_iso(version.creation_timestamp),
            "aliases": aliases,
            "tags": tags,
        }


def _model_id_from_source(source: str | None) -> str | None:
    if source and source.startswith("models:/m-"):
        candidate = source.removeprefix("models:/").split("/", 1)[0]
        return candidate if model_inputs.MODEL_UUID_RE.fullmatch(candidate) else None
    return None


def _utc_iso(millis: int | None) -> str:
    moment = datetime.fromtimestamp(millis / 1000, tz=UTC) if millis else datetime.now(UTC)
    return moment.isoformat()
