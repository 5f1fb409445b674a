"""Logging one model, once, in a run of its own: what ``HokusaiModelRegistry`` registers next.

The run is created through the client and never made active (``mlflow.active_run()`` is left
alone); the LoggedModel is created with its params, tags and source run, ``Model.log`` fills it,
and the run then gets the model as its output, its metrics (linked to the model) and its params.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, Metric, Param, RunStatus
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context

from hokusai_registry.errors import InvalidInputError
from worker.registration import reads, tags

logger = logging.getLogger(__name__)

#: MLflow takes at most 100 params per request.
PARAMS_PER_BATCH = 100


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
    (see :func:`log_in_run`); the registry's run is never made active.
    """

    def __init__(self, flavor: Any, run_id: str) -> None:
        self.flavor = flavor
        self.run_id = run_id

    def save_model(self, path: str, mlflow_model: Any, **kwargs: Any) -> None:
        mlflow_model.run_id = self.run_id
        self.flavor.save_model(path=path, mlflow_model=mlflow_model, **kwargs)


def log_in_run(
    client: MlflowClient,
    experiment_id: str,
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
    """Create a run in ``experiment_id``, log the model as its output, end the run (FAILED on an error).

    The run is never made active: for an active run, ``Model.log`` reads the whole run twice (to
    copy its params into the LoggedModel and to link its metrics); here the LoggedModel is created
    with them instead, and the run gets its metrics and params in one batch (bench/results has
    what that saves).

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
    # What mlflow.start_run records (user, source), except the git state of the *calling
    # script*: lineage is the training code's repository (run_tags) or nothing.
    context = {k: v for k, v in run_context.resolve_tags().items() if k not in tags.RUN_GIT_TAGS.values()}
    run = client.create_run(experiment_id, run_name=run_name, tags={**context, **run_tags})
    run_id = run.info.run_id
    try:
        logged = mlflow.initialize_logged_model(
            name=tags.MODEL_ARTIFACT_NAME,
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
        client.log_outputs(run_id, [LoggedModelOutput(info.model_id, step=0)])
        now = int(time.time() * 1000)
        linked = [Metric(k, float(v), now, 0, model_id=info.model_id) for k, v in (metrics or {}).items()]
        # The pre-upgrade names, on the run, for mlflow.search_runs.
        items = [Param(k, v) for k, v in run_params.items()]
        batches = [items[start : start + PARAMS_PER_BATCH] for start in range(0, len(items), PARAMS_PER_BATCH)]
        for index, batch in enumerate(batches or [[]]):
            metrics_now = linked if index == 0 else []
            if batch or metrics_now:
                client.log_batch(run_id, metrics=metrics_now, params=batch)
    except BaseException:
        try:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception as exc:  # the error that stopped the run matters more
            logger.warning("could not mark run %s FAILED: %s", run_id, exc)
        raise
    client.set_terminated(run_id)
    return info


def log_missing_params(store: reads.RegistryStore, run_id: str | None, run_params: dict[str, str]) -> None:
    """Resuming a logged model: the run params a crash may have cut off (params never change)."""
    run = reads.run_of(store, run_id)
    if run is None:
        return
    missing = [Param(key, value) for key, value in run_params.items() if key not in run.data.params]
    for start in range(0, len(missing), PARAMS_PER_BATCH):
        store.client.log_batch(run.info.run_id, params=missing[start : start + PARAMS_PER_BATCH])
