"""Registration benchmark: bare MLflow vs the old code path vs HokusaiModelRegistry vs the queue.

Run from the repository root (Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 must be up):

    .venv/bin/python -m bench.run                 # full run, both stores (~8-10 min on 2 cores)
    .venv/bin/python -m bench.run --quick         # a few reps, small batches (~2 min)
    .venv/bin/python -m bench.run --stores sqlite --reps 10

Same small scikit-learn model, same machine, one process, on each store (a sqlite file in a temp
dir, and a local ``mlflow server`` on a new PostgreSQL database). Variants, interleaved round-robin
within every repetition (the starting variant rotates each repetition):

1. ``bare``: ``sklearn.log_model(pip_requirements=[...])`` in a run, then ``register_model(model_uri)``;
2. ``old``: ``pyfunc.log_model(python_model=wrapper, registered_model_name=...)`` with default
   requirement inference, then ``register_model`` again (two versions). It costs ~3 s, so it runs
   only every ``reps/old-reps``-th repetition (``--old-reps``, default 10);
3. ``registry``: ``HokusaiModelRegistry.register_baseline`` (ModelInfo, model_uuid tag, metadata);
4. ``queue_1w`` / ``queue_2w``: ``enqueue_registration`` → worker registers → webhook received by a
   local ``WebhookReceiver``; per job, from enqueue to the receiver accepting the event, with one
   worker process consuming and with two (the second worker's consumers are switched on and off
   with Celery remote control, so both configurations interleave with the others).

Then throughput: a batch of ``--batch`` jobs enqueued at once, 1 worker vs 2 worker processes
(concurrency 1 each), alternated ``--throughput-reps`` times. Writes ``bench/results/latest.json``
(or ``--output``) with machine info, per-variant stats, ratios and pass/miss per target.
Uses Redis database 13 (``BENCH_REDIS_URL`` or ``--redis-url`` to change it) and flushes only it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
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
    "registry_over_bare": {"ratio": "3/1", "op": "<=", "limit": 1.05, "store": "both"},
    "old_over_registry": {"ratio": "2/3", "op": ">=", "limit": 20.0, "store": "both"},
    "queue_minus_bare_ms": {"ratio": "4-1 (ms, 1 worker)", "op": "<=", "limit": 30.0, "store": "sqlite"},
    "throughput_2w_over_1w": {"ratio": "2w/1w jobs/s", "op": ">=", "limit": 1.6, "store": "postgres"},
}
VARIANTS = ("bare", "old", "registry", "queue_1w", "queue_2w")
LABELS = {
    "bare": "1 bare MLflow (log_model + register_model)",
    "old": "2 old path (pyfunc, inferred reqs, 2 versions)",
    "registry": "3 HokusaiModelRegistry.register_baseline",
    "queue_1w": "4 queue: enqueue -> webhook, 1 worker",
    "queue_2w": "4 queue: enqueue -> webhook, 2 workers",
}


class _NullWriter(io.TextIOBase):
    def write(self, text: str) -> int:
        return len(text)


_SINK = _NullWriter()


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


_SUCCEEDED = re.compile(r"\[(?P<id>[0-9a-f-]{36}(?:-webhook)?)\] succeeded in (?P<s>[0-9.]+)s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="repetitions of the cheap variants (default 30)")
    parser.add_argument("--old-reps", type=int, default=10, help="repetitions of the ~3 s old path (default 10)")
    parser.add_argument("--batch", type=int, default=40, help="jobs per throughput batch (default 40)")
    parser.add_argument("--throughput-reps", type=int, default=2, help="batches per worker count (default 2)")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument("--server-workers", type=int, default=1, help="`mlflow server --workers` (default 1)")
    parser.add_argument("--quick", action="store_true", help="3 reps, 1 old rep, batches of 6, 1 throughput rep")
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
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
    return args


# ---------------------------------------------------------------------------- one store
class QueueBench:
    """Two worker processes and a receiver; worker B's consumers are toggled for 1- vs 2-worker runs."""

    def __init__(self, store: common.Store, redis_url: str, model_dir: Path, staging: Path, receiver: Any) -> None:
        from celery import Celery

        from hokusai_registry.contract import REGISTRATION_QUEUE, WEBHOOK_QUEUE

        self.redis_url = redis_url
        self.store = store
        self.model_dir = model_dir
        self.receiver = receiver
        self.settings = common.producer_settings(redis_url, store.work / "producer", staging)
        self.queues = (REGISTRATION_QUEUE, WEBHOOK_QUEUE)
        env = common.worker_env(store, redis_url, receiver.url, staging)
        self.workers = [devstack.WorkerProcess(env, store.work / "logs", concurrency=1) for _ in range(2)]
        self.control = Celery("bench-control", broker=redis_url, backend=redis_url)
        self.control.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")
        self.results = Celery("bench-results", broker=redis_url, backend=redis_url)
        self.results.conf.update(accept_content=["json"], result_serializer="json")
        self.active = 2
        self.timings: list[dict[str, Any]] = []

    def start(self) -> None:
        common.start_workers(self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def nodename(self, worker: devstack.WorkerProcess) -> str:
        return f"{worker.name}@{socket.gethostname()}"

    def use(self, count: int) -> None:
        """Let ``count`` (1 or 2) worker processes consume; waits for the remote-control replies."""
        if count == self.active:
            return
        second = self.nodename(self.workers[1])
        for queue in self.queues:
            if count == 1:
                replies = self.control.control.cancel_consumer(queue, destination=[second], reply=True, timeout=10)
            else:
                replies = self.control.control.add_consumer(queue, destination=[second], reply=True, timeout=10)
            if not replies:
                raise RuntimeError(f"worker {second} did not answer the remote-control request for {queue}")
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
            "redis (whole instance)": common.pids_matching("redis-server"),
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
    print(f"\n== {kind}: scratch folder {work}", flush=True)
    common.fresh_redis(args.redis_url)
    try:
        with (
            common.mlflow_store(kind, work, server_workers=args.server_workers) as store,
            WebhookReceiver(common.SECRET) as receiver,
        ):
            common.activate(store.tracking_uri)
            model = common.make_model()
            requirements = common.explicit_requirements()
            staging = work / "staging"
            staging.mkdir(parents=True, exist_ok=True)
            model_dir = common.stage_model(model, staging, requirements)
            bare_experiment = common.bench_experiment(store, "bench-bare")
            old_experiment = common.bench_experiment(store, "bench-old")
            registry = HokusaiModelRegistry(
                store.tracking_uri,
                settings=Settings(hokusai_home=work / "home", mlflow_tracking_uri=store.tracking_uri,
                                  redis_url=args.redis_url),
            )  # fmt: skip
            queue = QueueBench(store, args.redis_url, model_dir, staging, receiver)

            def bare() -> None:
                with mlflow.start_run(experiment_id=bare_experiment):
                    info = mlflow.sklearn.log_model(sk_model=model, name="model", pip_requirements=requirements)
                mlflow.register_model(info.model_uri, "bench_bare")

            def old() -> None:
                log_and_register_twice(model, old_experiment, "bench_old")

            def register() -> None:
                registry.register_baseline(model, "classification", common.METADATA, pip_requirements=requirements)

            def queue_1w() -> None:
                queue.use(1)
                return queue.one_job()

            def queue_2w() -> None:
                queue.use(2)
                return queue.one_job()

            runners: dict[str, Callable[[], Any]] = {
                "bare": bare, "old": old, "registry": register, "queue_1w": queue_1w, "queue_2w": queue_2w,
            }  # fmt: skip
            queue.start()
            try:
                print("warming up (one untimed run of each variant)", flush=True)
                for name, run in runners.items():
                    if name != "old" or args.old_reps:
                        with contextlib.redirect_stderr(_SINK):
                            run()
                queue.timings.clear()
                load_before = _loadavg()
                samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
                old_every = max(1, round(args.reps / args.old_reps)) if args.old_reps else 0
                old_done = 0
                for rep in range(args.reps):
                    names = list(VARIANTS)
                    if not (old_every and rep % old_every == 0 and old_done < args.old_reps):
                        names.remove("old")
                    else:
                        old_done += 1
                    shift = rep % len(names)
                    for name in names[shift:] + names[:shift]:
                        start = time.perf_counter()
                        with contextlib.redirect_stderr(_SINK):  # MLflow prints 'Created version ...'
                            measured = runners[name]()
                        samples[name].append(measured if name.startswith("queue") else time.perf_counter() - start)
                    if (rep + 1) % 5 == 0 or rep + 1 == args.reps:
                        print(
                            f"  rep {rep + 1}/{args.reps}: "
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
                load_after = _loadavg()
            finally:
                queue.stop()
            versions = {
                name: len(registry.client.search_model_versions(f"name = '{name}'"))
                for name in ("bench_bare", "bench_old", "hokusai_classification_baseline")
            }
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        common.fresh_redis(args.redis_url)

    stats = {name: common.summarize(values) for name, values in samples.items()}
    tput = {
        count: {
            "median_jobs_per_s": round(statistics.median(b["jobs_per_s"] for b in batches), 3) if batches else None,
            "batches": batches,
        }
        for count, batches in throughput.items()
    }
    return {"store": kind, "variants": stats, "throughput": tput, "queue_breakdown_1w": breakdown,
            "versions_created": versions, "loadavg_before": load_before, "loadavg_after": load_after}  # fmt: skip


# ---------------------------------------------------------------------------- ratios and targets
def ratios_of(result: dict[str, Any]) -> dict[str, Any]:
    med = {name: v["median_ms"] for name, v in result["variants"].items()}
    one = result["throughput"]["1"]["median_jobs_per_s"]
    two = result["throughput"]["2"]["median_jobs_per_s"]

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    return {
        "registry_over_bare": div(med["registry"], med["bare"]),
        "old_over_registry": div(med["old"], med["registry"]),
        "queue_over_bare": div(med["queue_1w"], med["bare"]),
        "queue_2w_over_bare": div(med["queue_2w"], med["bare"]),
        "queue_minus_bare_ms": round(med["queue_1w"] - med["bare"], 2) if med["queue_1w"] and med["bare"] else None,
        "throughput_2w_over_1w": div(two, one),
    }


def verdicts(ratios: dict[str, Any], store: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, target in TARGETS.items():
        value = ratios.get(key)
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
                       "server_workers": args.server_workers},
        "targets": TARGETS,
        "stores": {},
    }  # fmt: skip
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
