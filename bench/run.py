"""Registration benchmark: bare MLflow vs the old code path vs HokusaiModelRegistry vs the queue.

Run from the repository root (Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 must be up):

    .venv/bin/python -m bench.run                 # full run, both stores
    .venv/bin/python -m bench.run --quick         # a few reps, small batches
    .venv/bin/python -m bench.run --stores sqlite --reps 10

Same small scikit-learn model, same machine, one process, on each store (a sqlite file in a temp
dir, and a local ``mlflow server`` on a new PostgreSQL database, run with the flags and environment
of docker-compose.yml's ``mlflow`` service). Every round runs each variant once, in an order shuffled
anew every round (seeded, ``--seed``):

1. ``bare``: ``sklearn.log_model(pip_requirements=[...])`` in a run, then ``register_model(model_uri)``
   (what a queued job does: it carries no input example); ``bare_sig``: the same with
   ``signature=`` and ``input_example=`` (what ``registry`` does);
2. ``old``: ``pyfunc.log_model(python_model=wrapper, registered_model_name=...)`` with default
   requirement inference, then ``register_model`` again (two versions). It is slow, so it runs
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
intervals, and pass/miss per target. How long a run takes, and its figures: bench/README.md.
The variants are ``bench.variants``; the report ``bench.run_report``; the request counts
``bench.request_counts``.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine, stats
from bench.queue_bench import QueueBench
from bench.reports import RESULTS_DIR, write_json
from bench.request_counts import count_requests
from bench.run_report import TARGETS, print_table, ratios_of, verdicts
from bench.stack_setup import SECRET, STORES, mlflow_store, own_redis
from bench.topologies import TOPOLOGIES, ServerTopology, compose_topology
from bench.variants import VARIANTS, Variants, build_variants, silenced
from devtools import devstack

#: --artifacts → mlflow_store(workers_write_artifacts=...): None follows docker-compose.yml
WRITES = {"compose": None, "uploaded": False, "written": True}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="repetitions of the cheap variants (default 30)")
    parser.add_argument("--old-reps", type=int, default=10, help="repetitions of the slow old path (default 10)")
    parser.add_argument("--batch", type=int, default=40, help="jobs per throughput batch (default 40)")
    parser.add_argument("--throughput-reps", type=int, default=8, help="batches per worker count (default 8)")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite,postgres")
    parser.add_argument(
        "--topology",
        default="compose",
        help="how the server runs: compose (docker-compose.yml's flags, default) or " + ", ".join(TOPOLOGIES),
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
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders (logs, stores)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.old_reps, args.batch, args.throughput_reps = 3, 1, 6, 1
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for store in args.stores:
        if store not in STORES:
            parser.error(f"unknown store {store!r}; choose from {', '.join(STORES)}")
    args.old_reps = max(0, min(args.old_reps, args.reps))
    if args.topology != "compose" and args.topology not in TOPOLOGIES:
        parser.error(f"unknown topology {args.topology!r}")
    return args


# ---------------------------------------------------------------------------- one store
@dataclass
class Measured:
    """What the timed part of one store's run measured."""

    samples: dict[str, list[float]]
    orders: list[list[str]]
    loadavg_before: str | None
    loadavg_during: list[str | None]
    throughput: dict[str, list[dict[str, Any]]]
    breakdown: dict[str, Any]
    loadavg_after: str | None


def bench_store(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every variant on one store: warm-up, the shuffled rounds, throughput, then the request counts."""
    from devtools.receiver import WebhookReceiver

    work = devstack.scratch_dir(f"hokusai-bench-{kind}-")
    outside_git = devstack.scratch_dir("hokusai-bench-nogit-")
    print(f"\n== {kind}: scratch folder {work}", flush=True)
    topology = server_topology(kind, args)
    try:
        with (
            own_redis(work) as redis_url,
            mlflow_store(kind, work, topology=topology, workers_write_artifacts=WRITES.get(args.artifacts)) as store,
            WebhookReceiver(SECRET) as receiver,
        ):
            writes_artifacts = store.served_destination is not None
            variants = build_variants(store, redis_url, receiver, work, outside_git)
            measured = measure(variants, args)
            requests = None
            if store.kind == "postgres":
                requests = count_requests(store, redis_url, variants, receiver)
                print(f"  tracking-server requests: {requests['per_call']}", flush=True)
            versions = versions_created(variants.registry)
    finally:
        shutil.rmtree(outside_git, ignore_errors=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return store_result(kind, topology, writes_artifacts, measured, requests, versions)


def server_topology(kind: str, args: argparse.Namespace) -> ServerTopology | None:
    """How the server store's server runs (``--topology``); none for sqlite."""
    if kind == "sqlite":
        return None
    return compose_topology() if args.topology == "compose" else TOPOLOGIES[args.topology]


def measure(variants: Variants, args: argparse.Namespace) -> Measured:
    """Workers started, one untimed run of each variant, the timed rounds, throughput; workers stopped."""
    queue = variants.queue
    queue.start()
    rounds_load: list[str | None] = []
    try:
        warm_up(variants, args)
        queue.timings.clear()
        load_before = machine.loadavg()
        samples, orders = timed_rounds(variants, args, rounds_load)
        throughput = throughput_batches(queue, args)
        breakdown = queue.breakdown()
        load_after = machine.loadavg()
    finally:
        queue.stop()
    return Measured(samples, orders, load_before, rounds_load, throughput, breakdown, load_after)


def warm_up(variants: Variants, args: argparse.Namespace) -> None:
    print("warming up (one untimed run of each variant)", flush=True)
    for name, run in variants.runners.items():
        if name != "old" or args.old_reps:
            with silenced():
                run()


def timed_rounds(
    variants: Variants, args: argparse.Namespace, rounds_load: list[str | None]
) -> tuple[dict[str, list[float]], list[list[str]]]:
    """``--reps`` rounds, each variant once in an order shuffled anew (the old path in ``--old-reps`` of them).

    Seconds per call; a queue variant's is from enqueue until the receiver accepted the event.
    The load average every fifth round goes into ``rounds_load``.
    """
    rng = random.Random(args.seed)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    old_rounds = set(_spread(args.old_reps, args.reps))
    orders: list[list[str]] = []
    for rep in range(args.reps):
        names = [n for n in VARIANTS if n != "old" or rep in old_rounds]
        rng.shuffle(names)
        orders.append(names)
        for name in names:
            start = time.perf_counter()
            with silenced():
                measured = variants.runners[name]()
            samples[name].append(measured if name.startswith("queue") else time.perf_counter() - start)
        if (rep + 1) % 5 == 0 or rep + 1 == args.reps:
            rounds_load.append(machine.loadavg())
            print(
                f"  rep {rep + 1}/{args.reps} (load {rounds_load[-1]}): "
                + ", ".join(f"{n} {statistics.median(s) * 1000:.0f} ms" for n, s in samples.items() if s),
                flush=True,
            )
    return samples, orders


def throughput_batches(queue: QueueBench, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """``--throughput-reps`` batches with 1 worker and with 2, alternated (1, 2 then 2, 1)."""
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
    return throughput


def versions_created(registry: Any) -> dict[str, int]:
    """Model versions each registered model of the run has (a check that every call registered one)."""
    return {
        name: len(registry.client.search_model_versions(f"name = '{name}'"))
        for name in ("bench_bare", "bench_old", "hokusai_classification_baseline")
    }


def store_result(
    kind: str, topology: ServerTopology | None, writes_artifacts: bool, measured: Measured,
    requests: dict[str, Any] | None, versions: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """One store's part of the report (ratios and verdicts are added by ``main``)."""
    tput = {
        count: {
            "median_jobs_per_s": round(statistics.median(b["jobs_per_s"] for b in batches), 3) if batches else None,
            "batches": batches,
        }
        for count, batches in measured.throughput.items()
    }
    return {"store": kind, "server": topology.describe() if topology else None,
            "clients_write_served_artifacts": writes_artifacts,
            "variants": {name: stats.summarize(values) for name, values in measured.samples.items()},
            "samples_s": {name: [round(v, 5) for v in values] for name, values in measured.samples.items()},
            "orders": measured.orders, "throughput": tput, "queue_breakdown_1w": measured.breakdown,
            "requests": requests, "versions_created": versions, "loadavg_before": measured.loadavg_before,
            "loadavg_during": measured.loadavg_during, "loadavg_after": measured.loadavg_after}  # fmt: skip


def _spread(count: int, total: int) -> list[int]:
    """``count`` round numbers spread evenly over ``range(total)``."""
    return sorted({int(i * total / count) for i in range(count)}) if count else []


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
        "machine": machine.machine_info(),
        "parameters": {"reps": args.reps, "old_reps": args.old_reps, "batch": args.batch,
                       "throughput_reps": args.throughput_reps, "stores": args.stores, "quick": args.quick,
                       "topology": args.topology, "seed": args.seed, "artifacts": args.artifacts},
        "targets": TARGETS,
        "stores": {},
    }  # fmt: skip
    report["machine"]["loadavg_at_start"] = machine.loadavg()
    started = time.perf_counter()
    for kind in args.stores:
        result = bench_store(kind, args)
        result["ratios"] = ratios_of(result)
        result["targets"] = verdicts(result["ratios"], kind)
        report["stores"][kind] = result
        write_json(args.output, report)  # partial results survive a later failure
    report["duration_s"] = round(time.perf_counter() - started, 1)
    report["finished_utc"] = datetime.now(UTC).isoformat()
    write_json(args.output, report)
    print_table(report)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
