"""Where register_baseline's time goes compared with bare MLflow: per-step timings and store round trips.

    .venv/bin/python -m bench.profile_registry [--reps 15] [--store sqlite|postgres] [--cprofile]

Investigation tool behind the README's explanations (not a benchmark of record). It wraps the MLflow
and product functions a registration calls with timers (no product code is changed), runs ``bare``
and ``register_baseline`` alternately, and prints the median time of each step and how many store
round trips each variant makes (SQL sessions on sqlite, HTTP requests against the server).
``--cprofile`` adds a cProfile listing of register_baseline (standard library only).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import logging
import pstats
import shutil
import statistics
import sys
import time
import warnings
from collections import defaultdict
from typing import Any

from bench import stack_setup, workload
from devtools import devstack

TIMES: dict[str, list[float]] = defaultdict(list)
COUNTS: dict[str, int] = defaultdict(int)


def timed(owner: Any, attribute: str, label: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - start)

    setattr(owner, attribute, wrapper)


def counted(owner: Any, attribute: str, label: str) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        COUNTS[label] += 1
        return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_registry")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--store", choices=stack_setup.STORES, default="sqlite")
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)

    import mlflow
    import mlflow.sklearn
    import mlflow.tracking.fluent as fluent
    import mlflow.utils.rest_utils as rest_utils

    from hokusai_registry.settings import Settings
    from worker.registration import lineage, model_inputs
    from worker.registration import registry as registry_module
    from worker.registration.registry import HokusaiModelRegistry

    timed(registry_module, "flavor_for", "registry: flavor_for")
    timed(lineage, "git_lineage", "registry: git_lineage (remembered per repository state)")
    timed(model_inputs, "check_metadata", "registry: check_metadata")
    timed(HokusaiModelRegistry, "experiment_id", "registry: experiment_id")
    timed(HokusaiModelRegistry, "_log_in_run", "registry: _log_in_run (run + log_model)")
    timed(mlflow, "start_run", "mlflow.start_run")
    timed(fluent, "end_run", "mlflow.end_run")
    timed(mlflow, "delete_tag", "mlflow.delete_tag")
    timed(mlflow, "log_params", "mlflow.log_params")
    timed(mlflow.sklearn, "log_model", "mlflow.sklearn.log_model")
    timed(mlflow, "register_model", "mlflow.register_model")
    counted(rest_utils, "http_request", "http_requests")
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "before_cursor_execute")
    def _count_sql(*_: Any) -> None:
        COUNTS["sql_statements"] += 1

    @event.listens_for(Engine, "commit")
    def _count_commit(*_: Any) -> None:
        COUNTS["sql_commits"] += 1

    work = devstack.scratch_dir("hokusai-profile-")
    sink = io.StringIO()
    try:
        with stack_setup.mlflow_store(args.store, work) as store:
            stack_setup.activate(store.tracking_uri)
            model = workload.make_model()
            requirements = workload.explicit_requirements()
            experiment = stack_setup.bench_experiment(store, "bench-bare")
            registry = HokusaiModelRegistry(
                store.tracking_uri,
                settings=Settings(hokusai_home=work / "home", mlflow_tracking_uri=store.tracking_uri),
            )

            def bare() -> None:
                with mlflow.start_run(experiment_id=experiment):
                    info = mlflow.sklearn.log_model(sk_model=model, name="model", pip_requirements=requirements)
                mlflow.register_model(info.model_uri, "bench_bare")

            def register() -> None:
                registry.register_baseline(model, "classification", workload.METADATA, pip_requirements=requirements)

            with contextlib.redirect_stderr(sink):
                bare(), register()  # warm-up
            per_variant: dict[str, dict[str, list[float]]] = {"bare": defaultdict(list), "registry": defaultdict(list)}
            totals: dict[str, list[float]] = {"bare": [], "registry": []}
            profiler = cProfile.Profile()
            for rep in range(args.reps):
                for name, run in (("bare", bare), ("registry", register))[:: 1 if rep % 2 == 0 else -1]:
                    TIMES.clear()
                    COUNTS.clear()
                    start = time.perf_counter()
                    with contextlib.redirect_stderr(sink):
                        if args.cprofile and name == "registry":
                            profiler.enable()
                        run()
                        profiler.disable()
                    totals[name].append(time.perf_counter() - start)
                    for label, values in TIMES.items():
                        per_variant[name][label].append(sum(values))
                    for label, count in COUNTS.items():
                        per_variant[name]["#" + label].append(count)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.store}: medians over {args.reps} alternating repetitions (ms; # = round trips per registration)")
    print(f"{'step':<58}{'bare':>10}{'registry':>10}")
    labels = sorted(set(per_variant["bare"]) | set(per_variant["registry"]))
    print(f"{'TOTAL':<58}{statistics.median(totals['bare']) * 1000:>10.1f}"
          f"{statistics.median(totals['registry']) * 1000:>10.1f}")  # fmt: skip
    for label in labels:
        row = f"{label:<58}"
        for name in ("bare", "registry"):
            values = per_variant[name].get(label)
            if not values:
                row += f"{'-':>10}"
            elif label.startswith("#"):
                row += f"{statistics.median(values):>10.0f}"
            else:
                row += f"{statistics.median(values) * 1000:>10.1f}"
        print(row)
    if args.cprofile:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
