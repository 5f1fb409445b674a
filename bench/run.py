"""Registration benchmark: bare MLflow vs the old code path vs HokusaiModelRegistry vs the queue.

Run from the repository root (Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 must be up):

    .venv/bin/python -m bench.run                 # full run, both stores (~8-10 min on 2 cores)
    .venv/bin/python -m bench.run --quick         # a few reps, small batches (~2 min)
    .venv/bin/python -m bench.run --stores sqlite --reps 10

Same small scikit-learn model, same machine, one process, on each store (a sqlite file in a temp
dir, and a local ``mlflow server`` on a new PostgreSQL database, run with the flags and environment
of docker-compose.yml's ``mlflow`` service). Every round runs each variant once, in an order shuffled
anew every round (seeded, ``--seed``):

1. ``bare``: ``sklearn.log_model(pip_requirements=[...])`` in a run, then ``register_model(model_uri)``
   (what a queued job does: it carries no input example); ``bare_sig``: the same with
   ``signature=`` and ``input_example=`` (what ``registry`` does);
2. ``old``: ``pyfunc.log_model(python_model=wrapper, registered_model_name=...)`` with default
   requirement inference, then ``register_model`` again (two versions). It costs ~3 s, so it runs
   only in ``--old-reps`` of the rounds, spread evenly;
3. ``registry``: ``HokusaiModelRegistry.register_baseline`` with the same signature and input
   example (their validation is timed), from the repository (git lineage cached);
4. ``registry_nogit``: the same from a working directory outside git (the lineage cache misses);
5. ``queue_1w`` / ``queue_2w``: ``enqueue_registration`` → worker registers → webhook received by a
   local ``WebhookReceiver``; per job, from enqueue to the receiver accepting the event, with one
   worker process consuming and with two (the second worker's consumers are switched on and off
   with Celery remote control).

Then throughput: a batch of ``--batch`` jobs enqueued at once, 1 worker vs 2 worker processes
(concurrency 1 each), alternated ``--throughput-reps`` times (1w then 2w, then 2w then 1w, ...).
The verdicts on the queue path and on 2w/1w use estimates paired by round: the median of the
per-round differences queue_1w - bare, and the median of each throughput round's 2w/1w, so a
slow minute of the machine weighs on both sides of a comparison; the unpaired ones (difference
and ratio of the medians) are reported beside them. Then, outside every timing, the
HTTP requests each variant and each queued job makes to the tracking server (a counting proxy).
Each store gets a ``redis-server`` of the benchmark's own. Writes ``bench/results/latest.json``
(or ``--output``) with machine info and load, per-variant stats, ratios with bootstrap 95%
intervals, and pass/miss per target.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import os
import random
import re
import shutil
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import common
from devtools import devstack

TARGETS = {
    "registry_over_bare": {"ratio": "3/1b", "op": "<=", "limit": 1.02, "store": "both"},
    "old_over_registry": {"ratio": "2/3", "op": ">=", "limit": 20.0, "store": "sqlite"},
    "queue_minus_bare_ms": {"ratio": "4-1 (ms, 1 worker, paired)", "op": "<=", "limit": 10.0, "store": "sqlite"},
    "requests_per_queued_job": {"ratio": "requests/queued job", "op": "<=", "limit": 16, "store": "postgres"},
    "throughput_2w_over_1w": {"ratio": "2w/1w jobs/s (paired)", "op": ">=", "limit": 1.7, "store": "postgres"},
}
#: Paired estimates (see ``ratios_of``): the verdicts use them; the unpaired ones are reported beside.
PAIRED = {"queue_minus_bare_ms": "queue_minus_bare_ms_paired", "throughput_2w_over_1w": "throughput_2w_over_1w_paired"}
#: --artifacts → mlflow_store(workers_write_artifacts=...): None follows docker-compose.yml
WRITES = {"compose": None, "uploaded": False, "written": True}
VARIANTS = ("bare", "bare_sig", "old", "registry", "registry_nogit", "queue_1w", "queue_2w")
LABELS = {
    "bare": "1 bare MLflow (log_model + register_model)",
    "bare_sig": "1b bare MLflow + signature + input example",
    "old": "2 old path (pyfunc, inferred reqs, 2 versions)",
    "registry": "3 HokusaiModelRegistry.register_baseline",
    "registry_nogit": "3b register_baseline, cwd outside git",
    "queue_1w": "4 queue: enqueue -> webhook, 1 worker",
    "queue_2w": "4 queue: enqueue -> webhook, 2 workers",
}


class _NullWriter(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


_SINK = _NullWriter()


_SUCCEEDED = re.compile(r"\[(?P<id>[0-9a-f-]{36}(?:-webhook)?)\] succeeded in (?P<s>[0-9.]+)s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="repetitions of the cheap variants (default 30)")
    parser.add_argument("--old-reps", type=int, default=10, help="repetitions of the ~3 s old path (default 10)")
    parser.add_argument("--batch", type=int, default=40, help="jobs per throughput batch (default 40)")
    parser.add_argument("--throughput-reps", type=int, default=8, help="batches per worker count (default 8)")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument(
        "--topology",
        default="compose",
        help="how the server runs: compose (docker-compose.yml's flags, default) or " + ", ".join(common.TOPOLOGIES),
    )
    parser.add_argument("--seed", type=int, default=13, help="seed of the per-round variant order")
    parser.add_argument(
        "--artifacts",
        choices=("compose", "uploaded", "written"),
        default="compose",
        help="server store: served artifacts uploaded through the server (uploaded), or written by the clients "
        "straight into the server's folder (written, SERVED_ARTIFACTS_DESTINATION); default: as docker-compose.yml",
    )
    parser.add_argument("--quick", action="store_true", help="3 reps, 1 old rep, batches of 6, 1 throughput rep")
    parser.add_argument("--output", type=Path, default=common.RESULTS_DIR / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders (logs, stores)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.old_reps, args.batch, args.throughput_reps = 3, 1, 6, 1
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for store in args.stores:
        if store not in common.STORES:
            parser.error(f"unknown store {store!r}; choose from {', '.join(common.STORES)}")
    args.old_reps = max(0, min(args.old_reps, args.reps))
    if args.topology != "compose" and args.topology not in common.TOPOLOGIES:
        parser.error(f"unknown topology {args.topology!r}")
    return args


# ---------------------------------------------------------------------------- one store
class QueueBench:
    """Worker processes and a receiver; consumers of the last ones are toggled for 1- vs N-worker runs."""

    def __init__(
        self,
        store: common.Store,
        redis_url: str,
        model_dir: Path,
        staging: Path,
        receiver: Any,
        *,
        workers: int = 2,
        worker_env: list[dict[str, str]] | None = None,
    ) -> None:
        """``worker_env``: per worker process, variables that replace the common ones (investigations)."""
        from celery import Celery

        from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE

        self.redis_url = redis_url
        self.store = store
        self.model_dir = model_dir
        self.receiver = receiver
        self.settings = common.producer_settings(redis_url, store.work / "producer", staging)
        self.queues = (REGISTRATION_QUEUE, WEBHOOK_QUEUE)
        env = common.worker_env(store, redis_url, receiver.url, staging)
        own = worker_env or [{} for _ in range(workers)]
        self.workers = [
            devstack.WorkerProcess({**env, **own[i]}, store.work / "logs", concurrency=1) for i in range(workers)
        ]
        self.control = Celery("bench-control", broker=redis_url, backend=redis_url)
        self.control.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
        self.results = Celery("bench-results", broker=redis_url, backend=redis_url)
        self.results.conf.update(accept_content=["json"], result_serializer="json")
        self.active = workers
        self.timings: list[dict[str, Any]] = []

    def start(self) -> None:
        common.start_workers(self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def nodename(self, worker: devstack.WorkerProcess) -> str:
        return f"{worker.name}@{socket.gethostname()}"

    def use(self, count: int) -> None:
        """Let the first ``count`` worker processes consume; waits for the remote-control replies."""
        for index in range(min(count, self.active), max(count, self.active)):
            name = self.nodename(self.workers[index])
            for queue in self.queues:
                if count < self.active:
                    replies = self.control.control.cancel_consumer(queue, destination=[name], reply=True, timeout=10)
                else:
                    replies = self.control.control.add_consumer(queue, destination=[name], reply=True, timeout=10)
                if not replies:
                    raise RuntimeError(f"worker {name} did not answer the remote-control request for {queue}")
        self.active = count

    def one_job(self) -> float:
        """Seconds from enqueue until the receiver accepted this job's event."""
        from producers.enqueue import enqueue_registration

        expected = len(self.receiver.events) + 1
        wall = time.time()
        start = time.perf_counter()
        job_id = enqueue_registration(common.job_fields(self.model_dir), settings=self.settings)
        self.receiver.wait_for(expected, timeout_s=180)
        elapsed = time.perf_counter() - start
        self.timings.append({"job_id": job_id, "enqueued_wall": wall, "latency_s": elapsed, "workers": self.active})
        return elapsed

    def batch(self, size: int) -> dict[str, Any]:
        from producers.enqueue import enqueue_registration

        expected = len(self.receiver.events) + size
        groups = {
            "workers": [
                pid for w in self.workers[: self.active] if w.process for pid in common.tree_pids(w.process.pid)
            ],
            **self.store.process_groups(),
            "redis (the benchmark's own)": common.pids_matching(
                "redis-server", self.redis_url.rsplit(":", 1)[1].split("/")[0]
            ),
            "benchmark process (receiver)": [os.getpid()],
        }
        cpu_before = common.cpu_snapshot(groups)
        start = time.perf_counter()
        job_ids = [enqueue_registration(common.job_fields(self.model_dir), settings=self.settings) for _ in range(size)]
        enqueued = time.perf_counter() - start
        self.receiver.wait_for(expected, timeout_s=60 + 30 * size)
        elapsed = time.perf_counter() - start
        cpu_after = common.cpu_snapshot(groups)
        # Celery publishes a chain's next step before it stores the step's result: the webhook can
        # arrive a moment before the registration reads SUCCESS.
        deadline = time.monotonic() + 30
        while (states := {self.results.AsyncResult(j).state for j in job_ids}) != {"SUCCESS"}:
            if time.monotonic() > deadline or states & {"FAILURE", "REVOKED"}:
                raise RuntimeError(f"throughput batch: job states {states}")
            time.sleep(0.05)
        used = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
        ours = sum(v for k, v in used.items() if k != "system")
        return {
            "jobs": size, "seconds": round(elapsed, 3), "enqueue_seconds": round(enqueued, 3),
            "jobs_per_s": round(size / elapsed, 3),
            "cpu_ms_per_job": {k: round(1000 * v / size, 1) for k, v in used.items() if k != "system"},
            "cpu_ms_per_job_ours_total": round(1000 * ours / size, 1),
            "machine_cores_busy": round(used["system"] / elapsed, 2),
            "other_processes_cores_busy": round(max(0.0, used["system"] - ours) / elapsed, 2),
        }  # fmt: skip

    def task_runtimes(self) -> dict[str, float]:
        """Task id → seconds the worker spent in it, from the workers' 'succeeded in' log lines."""
        found: dict[str, float] = {}
        for worker in self.workers:
            for match in _SUCCEEDED.finditer(worker.log_text()):
                found[match["id"]] = float(match["s"])
        return found

    def breakdown(self) -> dict[str, Any]:
        """Where a queued job's time goes: register task, webhook task, and everything else (transport)."""
        from producers.enqueue import webhook_task_id

        runtimes = self.task_runtimes()
        register, webhook, other = [], [], []
        for timing in self.timings:
            if timing["workers"] != 1:
                continue
            reg = runtimes.get(timing["job_id"])
            hook = runtimes.get(webhook_task_id(timing["job_id"]))
            if reg is None or hook is None:
                continue
            register.append(reg)
            webhook.append(hook)
            other.append(timing["latency_s"] - reg - hook)
        return {
            "register_task": common.summarize(register),
            "webhook_task": common.summarize(webhook),
            "queue_transport_and_rest": common.summarize(other),
        }


def bench_store(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    import mlflow

    from bench.old_path import log_and_register_twice
    from devtools.receiver import WebhookReceiver
    from hokusai_registry.settings import Settings
    from worker.registration.registry import HokusaiModelRegistry

    work = devstack.scratch_dir(f"hokusai-bench-{kind}-")
    outside_git = devstack.scratch_dir("hokusai-bench-nogit-")
    print(f"\n== {kind}: scratch folder {work}", flush=True)
    topology = (
        None
        if kind == "sqlite"
        else (common.compose_topology() if args.topology == "compose" else common.TOPOLOGIES[args.topology])
    )
    rng = random.Random(args.seed)
    try:
        with (
            common.own_redis(work) as redis_url,
            common.mlflow_store(
                kind, work, topology=topology, workers_write_artifacts=WRITES.get(args.artifacts)
            ) as store,  # fmt: skip
            WebhookReceiver(common.SECRET) as receiver,
        ):
            writes_artifacts = store.served_destination is not None
            common.activate(store.tracking_uri)
            model = common.make_model()
            requirements = common.explicit_requirements()
            signature, example = common.signature_and_example(model)
            staging = work / "staging"
            staging.mkdir(parents=True, exist_ok=True)
            model_dir = common.stage_model(model, staging, requirements)
            bare_experiment = common.bench_experiment(store, "bench-bare")
            old_experiment = common.bench_experiment(store, "bench-old")

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
                registry.register_baseline(model, "classification", common.METADATA, signature=signature,
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
            queue.start()
            rounds_load: list[str | None] = []
            try:
                print("warming up (one untimed run of each variant)", flush=True)
                for name, run in runners.items():
                    if name != "old" or args.old_reps:
                        with contextlib.redirect_stderr(_SINK), contextlib.redirect_stdout(_SINK):
                            run()
                queue.timings.clear()
                load_before = common.loadavg()
                samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
                old_rounds = set(_spread(args.old_reps, args.reps))
                orders: list[list[str]] = []
                for rep in range(args.reps):
                    names = [n for n in VARIANTS if n != "old" or rep in old_rounds]
                    rng.shuffle(names)
                    orders.append(names)
                    for name in names:
                        start = time.perf_counter()
                        with contextlib.redirect_stderr(_SINK), contextlib.redirect_stdout(_SINK):
                            measured = runners[name]()  # MLflow prints 'Created version ...'
                        samples[name].append(measured if name.startswith("queue") else time.perf_counter() - start)
                    if (rep + 1) % 5 == 0 or rep + 1 == args.reps:
                        rounds_load.append(common.loadavg())
                        print(
                            f"  rep {rep + 1}/{args.reps} (load {rounds_load[-1]}): "
                            + ", ".join(f"{n} {statistics.median(s) * 1000:.0f} ms" for n, s in samples.items() if s),
                            flush=True,
                        )
                throughput: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
                for rep in range(args.throughput_reps):
                    for count in (1, 2) if rep % 2 == 0 else (2, 1):
                        queue.use(count)
                        outcome = queue.batch(args.batch)
                        throughput[str(count)].append(outcome)
                        print(f"  throughput, {count} worker(s): {outcome['jobs_per_s']:.2f} jobs/s "
                              f"({outcome['jobs']} jobs in {outcome['seconds']:.1f} s); CPU per job "
                              f"{outcome['cpu_ms_per_job']}; other processes kept "
                              f"{outcome['other_processes_cores_busy']} cores busy", flush=True)  # fmt: skip
                breakdown = queue.breakdown()
                load_after = common.loadavg()
            finally:
                queue.stop()
            requests = None
            if store.kind == "postgres":
                requests = count_requests(store, redis_url, model_dir, staging, receiver, runners, make_registry)
                print(f"  tracking-server requests: {requests['per_call']}", flush=True)
            versions = {
                name: len(registry.client.search_model_versions(f"name = '{name}'"))
                for name in ("bench_bare", "bench_old", "hokusai_classification_baseline")
            }
    finally:
        shutil.rmtree(outside_git, ignore_errors=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    stats = {name: common.summarize(values) for name, values in samples.items()}
    tput = {
        count: {
            "median_jobs_per_s": round(statistics.median(b["jobs_per_s"] for b in batches), 3) if batches else None,
            "batches": batches,
        }
        for count, batches in throughput.items()
    }
    return {"store": kind, "server": topology.describe() if topology else None,
            "clients_write_served_artifacts": writes_artifacts, "variants": stats,
            "samples_s": {name: [round(v, 5) for v in values] for name, values in samples.items()},
            "orders": orders, "throughput": tput, "queue_breakdown_1w": breakdown, "requests": requests,
            "versions_created": versions, "loadavg_before": load_before, "loadavg_during": rounds_load,
            "loadavg_after": load_after}  # fmt: skip


def _spread(count: int, total: int) -> list[int]:
    """``count`` round numbers spread evenly over ``range(total)``."""
    return sorted({int(i * total / count) for i in range(count)}) if count else []


def count_requests(
    store: common.Store, redis_url: str, model_dir: Path, staging: Path, receiver: Any,
    runners: dict[str, Callable[[], Any]], make_registry: Callable[[str], Any],
) -> dict[str, Any]:  # fmt: skip
    """HTTP requests to the tracking server per bare / registry call and per queued job (outside timings).

    A counting proxy sits in front of the server; the in-process variants and one extra worker
    process use it for ``JOBS`` calls each.
    """
    from devtools.request_counter import RequestCounter
    from producers.enqueue import enqueue_registration

    jobs = 3
    per_call: dict[str, float] = {}
    paths: dict[str, dict[str, float]] = {}
    with RequestCounter(store.tracking_uri) as proxy:
        common.activate(proxy.url)
        try:
            proxied = make_registry(proxy.url)
            model = common.make_model()
            signature, example = common.signature_and_example(model)

            requirements = common.explicit_requirements()

            def registry_call() -> None:
                proxied.register_baseline(model, "classification", common.METADATA, signature=signature,
                                          input_example=example, pip_requirements=requirements)  # fmt: skip

            registry_call()  # the experiment is looked up once per process: not per call
            for name, call in (("bare", runners["bare"]), ("bare_sig", runners["bare_sig"]),
                               ("registry", registry_call)):  # fmt: skip
                before = proxy.snapshot()
                for _ in range(jobs):
                    with contextlib.redirect_stderr(_SINK), contextlib.redirect_stdout(_SINK):
                        call()
                delta = proxy.snapshot() - before
                per_call[name] = round(sum(delta.values()) / jobs, 2)
                paths[name] = _by_route(delta, jobs)
        finally:
            common.activate(store.tracking_uri)
        # Queued jobs as the stack runs them, and (when its workers write the database) through the server.
        ways = {"queued_job": store.workers_database}
        ways |= {"queued_job_through_server": None} if store.workers_database else {}
        settings = common.producer_settings(redis_url, store.work / "producer", staging)
        for name, database in ways.items():
            proxied_store = dataclasses.replace(store, tracking_uri=proxy.url, workers_database=database)
            env = common.worker_env(proxied_store, redis_url, receiver.url, staging)
            with devstack.WorkerProcess(env, store.work / "logs", concurrency=1):
                expected = len(receiver.events) + 1
                enqueue_registration(common.job_fields(model_dir), settings=settings)  # warm-up: opens the store
                receiver.wait_for(expected, timeout_s=120)
                before = proxy.snapshot()
                for _ in range(jobs):
                    expected = len(receiver.events) + 1
                    enqueue_registration(common.job_fields(model_dir), settings=settings)
                    receiver.wait_for(expected, timeout_s=120)
                delta = proxy.snapshot() - before
            per_call[name] = round(sum(delta.values()) / jobs, 2)
            paths[name] = _by_route(delta, jobs)
    return {"calls_each": jobs, "per_call": per_call, "by_route_per_call": paths}


def _by_route(counts: Any, calls: int) -> dict[str, float]:
    """Requests per call by route: ids (``m-<hex>``) and artifact file names folded together."""
    routes: dict[str, float] = {}
    for key, count in counts.items():
        key = re.sub(r"/m-[0-9a-f]{32}", "/m-*", key)
        key = re.sub(r"(/mlflow-artifacts/artifacts)/.*", r"\1/*", key)
        routes[key] = routes.get(key, 0) + count / calls
    return {k: round(v, 2) for k, v in sorted(routes.items())}


# ---------------------------------------------------------------------------- ratios and targets
def ratios_of(result: dict[str, Any]) -> dict[str, Any]:
    med = {name: v["median_ms"] for name, v in result["variants"].items()}
    raw = result["samples_s"]
    one = result["throughput"]["1"]["median_jobs_per_s"]
    two = result["throughput"]["2"]["median_jobs_per_s"]

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    requests = (result.get("requests") or {}).get("per_call") or {}
    return {
        "registry_over_bare": div(med["registry"], med["bare_sig"]),
        "registry_over_bare_ci95": common.bootstrap_ratio(raw["registry"], raw["bare_sig"]),
        "registry_nogit_over_bare": div(med["registry_nogit"], med["bare_sig"]),
        "registry_nogit_over_bare_ci95": common.bootstrap_ratio(raw["registry_nogit"], raw["bare_sig"]),
        "old_over_registry": div(med["old"], med["registry"]),
        "queue_over_bare": div(med["queue_1w"], med["bare"]),
        "queue_2w_over_bare": div(med["queue_2w"], med["bare"]),
        "queue_minus_bare_ms": round(med["queue_1w"] - med["bare"], 2) if med["queue_1w"] and med["bare"] else None,
        "queue_minus_bare_ms_ci95": common.bootstrap_difference_ms(raw["queue_1w"], raw["bare"]),
        # Both ran once in every round: the median of the per-round differences, which a slow
        # minute of the machine shifts for both (this machine's speed drifts by up to 1.6x).
        "queue_minus_bare_ms_paired": _paired_median_ms(raw["queue_1w"], raw["bare"]),
        "queue_minus_bare_ms_paired_ci95": common.bootstrap_paired_difference_ms(raw["queue_1w"], raw["bare"]),
        "requests_per_queued_job": requests.get("queued_job"),
        "requests_per_queued_job_through_server": requests.get("queued_job_through_server"),
        "requests_per_bare": requests.get("bare"),
        "requests_per_registry": requests.get("registry"),
        "throughput_2w_over_1w": div(two, one),
        "throughput_2w_over_1w_range": _batch_range(result["throughput"]),
        # Batches alternate 1w, 2w / 2w, 1w: the median of each pair's ratio.
        "throughput_2w_over_1w_per_pair": (
            pairs := common.per_round_ratios(result["throughput"]["1"]["batches"], result["throughput"]["2"]["batches"])
        ),
        "throughput_2w_over_1w_paired": round(statistics.median(pairs), 3) if pairs else None,
        "throughput_2w_over_1w_paired_ci95": (
            [round(bound, 3) for bound in interval] if (interval := common.bootstrap_median(pairs)) else None
        ),
    }


def _paired_median_ms(top: list[float], bottom: list[float]) -> float | None:
    diffs = [a - b for a, b in zip(top, bottom, strict=True)]
    return round(1000 * statistics.median(diffs), 2) if diffs else None


def _batch_range(throughput: dict[str, Any]) -> list[float] | None:
    """Lowest and highest 2w/1w ratio over every pair of batches (too few batches for a bootstrap)."""
    ones = [b["jobs_per_s"] for b in throughput["1"]["batches"]]
    twos = [b["jobs_per_s"] for b in throughput["2"]["batches"]]
    if not ones or not twos:
        return None
    return [round(min(twos) / max(ones), 3), round(max(twos) / min(ones), 3)]


def verdicts(ratios: dict[str, Any], store: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, target in TARGETS.items():
        value = ratios.get(PAIRED.get(key, key))
        applies = target["store"] in ("both", store)
        if value is None:
            verdict = "n/a"
        else:
            ok = value <= target["limit"] if target["op"] == "<=" else value >= target["limit"]
            verdict = "pass" if ok else "miss"
        out[key] = {"value": value, "target": f"{target['op']} {target['limit']:g}", "verdict": verdict,
                    "binding": applies}  # fmt: skip
    return out


def print_table(report: dict[str, Any]) -> None:
    stores = [s for s in common.STORES if s in report["stores"]]
    head = f"{'variant':<48}" + "".join(f"{s + ' median':>18}{'p95':>12}{'n':>5}" for s in stores)
    print("\n" + head)
    print("-" * len(head))
    for name in VARIANTS:
        row = f"{LABELS[name]:<48}"
        for store in stores:
            v = report["stores"][store]["variants"][name]
            row += f"{_ms(v['median_ms']):>18}{_ms(v['p95_ms']):>12}{v['n']:>5}"
        print(row)
    for count in ("1", "2"):
        row = f"{'throughput, ' + count + ' worker(s), jobs/s':<48}"
        for store in stores:
            value = report["stores"][store]["throughput"][count]["median_jobs_per_s"]
            batches = len(report["stores"][store]["throughput"][count]["batches"])
            row += f"{value if value is not None else '-':>18}{'':>12}{batches:>5}"
        print(row)
    print("\ntarget                                   " + "".join(f"{s:>24}" for s in stores))
    for key, target in TARGETS.items():
        row = f"{target['ratio'] + ' ' + target['op'] + ' ' + format(target['limit'], 'g'):<41}"
        for store in stores:
            v = report["stores"][store]["targets"][key]
            mark = v["verdict"] if v["binding"] else f"({v['verdict']})"
            row += f"{str(v['value']) + ' ' + mark:>24}"
        print(row)
    print("(verdicts in parentheses: informational, the target is set on the other store)")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    report: dict[str, Any] = {
        "benchmark": "bench.run",
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": common.machine_info(),
        "parameters": {"reps": args.reps, "old_reps": args.old_reps, "batch": args.batch,
                       "throughput_reps": args.throughput_reps, "stores": args.stores, "quick": args.quick,
                       "topology": args.topology, "seed": args.seed, "artifacts": args.artifacts},
        "targets": TARGETS,
        "stores": {},
    }  # fmt: skip
    report["machine"]["loadavg_at_start"] = common.loadavg()
    started = time.perf_counter()
    for kind in args.stores:
        result = bench_store(kind, args)
        result["ratios"] = ratios_of(result)
        result["targets"] = verdicts(result["ratios"], kind)
        report["stores"][kind] = result
        common.write_json(args.output, report)  # partial results survive a later failure
    report["duration_s"] = round(time.perf_counter() - started, 1)
    report["finished_utc"] = datetime.now().astimezone().isoformat()
    common.write_json(args.output, report)
    print_table(report)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
