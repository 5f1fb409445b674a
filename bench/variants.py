"""The variants ``bench.run`` times on one store, each one call: bare MLflow, the old path, the registry, the queue.

``build_variants`` stages the model once and returns every variant's call (``Variants.runners``,
in ``VARIANTS`` order) with what they share: the registry on the store and the queue's workers.
mlflow and the worker's modules are imported on call.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import workload
from bench.queue_bench import QueueBench
from bench.stack_setup import Store, activate, bench_experiment

VARIANTS = ("bare", "bare_sig", "old", "registry", "registry_nogit", "queue_1w", "queue_2w")


class _NullWriter(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


_SINK = _NullWriter()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Nothing printed while a variant runs (MLflow prints 'Created version ...')."""
    with contextlib.redirect_stderr(_SINK), contextlib.redirect_stdout(_SINK):
        yield


@dataclass
class Variants:
    """Every variant's call on one store, and what they share."""

    runners: dict[str, Callable[[], Any]]
    #: ``HokusaiModelRegistry`` on the store (the registry variants use it)
    registry: Any
    #: a ``HokusaiModelRegistry`` on another tracking URI (the counting proxy)
    make_registry: Callable[[str], Any]
    queue: QueueBench
    model_dir: Path
    staging: Path


def build_variants(store: Store, redis_url: str, receiver: Any, work: Path, outside_git: Path) -> Variants:
    """Stage the model, create the experiments, and build each variant's call (workers not started)."""
    import mlflow

    from bench.old_path import log_and_register_twice
    from hokusai_registry.settings import Settings
    from worker.registration.registry import HokusaiModelRegistry

    activate(store.tracking_uri)
    model = workload.make_model()
    requirements = workload.explicit_requirements()
    signature, example = workload.signature_and_example(model)
    staging = work / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    model_dir = workload.stage_model(model, staging, requirements)
    bare_experiment = bench_experiment(store, "bench-bare")
    old_experiment = bench_experiment(store, "bench-old")

    def make_registry(uri: str) -> HokusaiModelRegistry:
        destination = str(store.served_destination) if store.served_destination else None
        return HokusaiModelRegistry(uri, settings=Settings(
            hokusai_home=work / "home", mlflow_tracking_uri=uri, redis_url=redis_url,
            served_artifacts_destination=destination))  # fmt: skip

    registry = make_registry(store.tracking_uri)
    queue = QueueBench(store, redis_url, model_dir, staging, receiver)

    def bare() -> None:
        with mlflow.start_run(experiment_id=bare_experiment):
            info = mlflow.sklearn.log_model(sk_model=model, name="model", pip_requirements=requirements)
        mlflow.register_model(info.model_uri, "bench_bare")

    def bare_sig() -> None:
        with mlflow.start_run(experiment_id=bare_experiment):
            info = mlflow.sklearn.log_model(
                sk_model=model, name="model", pip_requirements=requirements, signature=signature,
                input_example=example,
            )  # fmt: skip
        mlflow.register_model(info.model_uri, "bench_bare")

    def old() -> None:
        log_and_register_twice(model, old_experiment, "bench_old")

    def register() -> None:
        registry.register_baseline(model, "classification", workload.METADATA, signature=signature,
                                   input_example=example, pip_requirements=requirements)  # fmt: skip

    def register_nogit() -> None:
        here = os.getcwd()
        os.chdir(outside_git)
        try:
            register()
        finally:
            os.chdir(here)

    def queue_1w() -> float:
        queue.use(1)
        return queue.one_job()

    def queue_2w() -> float:
        queue.use(2)
        return queue.one_job()

    runners: dict[str, Callable[[], Any]] = {
        "bare": bare, "bare_sig": bare_sig, "old": old, "registry": register, "registry_nogit": register_nogit,
        "queue_1w": queue_1w, "queue_2w": queue_2w,
    }  # fmt: skip
    return Variants(runners, registry, make_registry, queue, model_dir, staging)
