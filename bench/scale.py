"""Throughput against worker processes, for each way of running the tracking server (+ a PNG plot).

    .venv/bin/python -m bench.scale            # compose, gthread-2-close, sync-2, uvicorn-1; 1 and 2 workers
    .venv/bin/python -m bench.scale --topologies compose,gunicorn-2,sync-2 --workers 1,2,3 --batch 30 --reps 3
    .venv/bin/python -m bench.scale --uploads-too   # + compose with artifacts uploaded through the server

For every topology: a new PostgreSQL database, ``mlflow server`` as the topology says (``compose`` =
docker-compose.yml's flags and environment, with its workers on the server's database as compose's
``worker`` service runs them; every other topology's workers go through the server), a
``redis-server`` of its own, as many ``celery -A worker worker`` processes (concurrency 1) as the largest
worker count, a local webhook receiver. All topologies run side by side; every round measures each
(topology, worker count) once, in an order shuffled anew every round (``--seed``), so a slow minute
of the machine does not fall on one topology. A batch of ``--batch`` jobs is enqueued at once and
timed until the receiver accepted every event (idle worker processes' consumers toggled with Celery
remote control). Each batch records CPU seconds per job of workers, server, PostgreSQL, Redis and
what the rest of the machine used. Writes ``bench/results/scale-latest.json`` and
``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import machine, reports, stack_setup, stats, topologies, workload
from bench.queue_bench import QueueBench
from devtools import devstack


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--topologies", default="compose,gthread-2-close,sync-2,uvicorn-1",
                        help="comma-separated: compose, " + ", ".join(topologies.TOPOLOGIES))  # fmt: skip
    parser.add_argument("--uploads-too", action="store_true",
                        help="also run compose with the artifacts stored the other way (uploaded through the "
                             "server instead of written by the workers, SERVED_ARTIFACTS_DESTINATION)")  # fmt: skip
    parser.add_argument("--workers", default="1,2", help="worker process counts (default 1,2)")
    parser.add_argument("--batch", type=int, default=30, help="jobs per batch (default 30)")
    parser.add_argument("--reps", type=int, default=3, help="rounds: batches per topology and worker count (default 3)")
    parser.add_argument("--seed", type=int, default=13, help="seed of the per-round order")
    parser.add_argument("--output", type=Path, default=reports.RESULTS_DIR / "scale-latest.json")
    parser.add_argument("--plot", type=Path, default=reports.RESULTS_DIR / "scale.png")
    parser.add_argument("--replot", action="store_true", help="only draw the plot again from --output's JSON")
    args = parser.parse_args(argv)
    args.topologies = [t.strip() for t in args.topologies.split(",") if t.strip()]
    for name in args.topologies:
        if name != "compose" and name not in topologies.TOPOLOGIES:
            parser.error(f"unknown topology {name!r}")
    args.workers = sorted({int(n) for n in args.workers.split(",")})
    return args


@dataclasses.dataclass
class Stack:
    """One topology's running stack: its own Redis, database, server, workers and receiver."""

    label: str
    topology: topologies.ServerTopology
    writes: bool
    store: stack_setup.Store
    queue: Any
    batches: dict[str, list[dict[str, Any]]]


def start_stack(stack: ExitStack, name: str, args: argparse.Namespace, *, writes: bool) -> Stack:
    """Start one topology (left running until ``stack`` closes) and warm every worker process up."""
    from devtools.receiver import WebhookReceiver
    from producers.enqueue import enqueue_registration

    topology = topologies.compose_topology() if name == "compose" else topologies.TOPOLOGIES[name]
    topology = dataclasses.replace(topology, workers_write_artifacts=writes)
    path = "workers on its database" if topology.workers_on_database else "workers through the server"
    label = f"{name}: {path}, {'workers write artifacts' if writes else 'artifacts uploaded through the server'}"
    work = devstack.scratch_dir("hokusai-scale-")
    stack.callback(shutil.rmtree, work, ignore_errors=True)
    print(f"\n== starting {label}: {topology.describe()}", flush=True)
    redis_url = stack.enter_context(stack_setup.own_redis(work))
    store = stack.enter_context(
        stack_setup.mlflow_store("postgres", work, topology=topology, workers_write_artifacts=writes)
    )
    receiver = stack.enter_context(WebhookReceiver(stack_setup.SECRET))
    staging = work / "staging"
    staging.mkdir(parents=True)
    model_dir = workload.stage_model(workload.make_model(), staging, workload.explicit_requirements())
    queue = QueueBench(store, redis_url, model_dir, staging, receiver, workers=max(args.workers))
    queue.start()
    stack.callback(queue.stop)
    warm = 2 * max(args.workers)  # every worker process opens its store before timing
    for _ in range(warm):
        enqueue_registration(workload.job_fields(model_dir), settings=queue.settings)
    receiver.wait_for(warm, timeout_s=300)
    return Stack(label, topology, writes, store, queue, {str(n): [] for n in args.workers})


def run_rounds(stacks: list[Stack], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (topology, worker count) batch once per round, in an order shuffled anew every round.

    All stacks run side by side (idle ones wait on their own Redis), so a slow minute of the machine
    falls on a random mix of topologies instead of on whichever was measured then.
    """
    rng = random.Random(args.seed)
    pairs = [(stack, count) for stack in stacks for count in args.workers]
    orders = []
    for round_no in range(args.reps):
        rng.shuffle(pairs)
        orders.append([f"{stack.label} / {count}" for stack, count in pairs])
        for stack, count in pairs:
            stack.queue.use(count)
            outcome = stack.queue.batch(args.batch)
            outcome["loadavg"] = machine.loadavg()
            outcome["round"] = round_no
            stack.batches[str(count)].append(outcome)
            print(f"  round {round_no + 1}: {stack.label} {count} worker(s): {outcome['jobs_per_s']:.2f} jobs/s; "
                  f"CPU ms/job {outcome['cpu_ms_per_job']}; other processes {outcome['other_processes_cores_busy']}"
                  " cores", flush=True)  # fmt: skip
    results = []
    for stack in stacks:
        medians = {n: round(statistics.median(b["jobs_per_s"] for b in bs), 3) for n, bs in stack.batches.items() if bs}
        one = medians.get("1")
        # 2w/1w within each round: the two batches ran minutes apart at most
        same_round = stats.per_round_ratios(stack.batches.get("1", []), stack.batches.get("2", []))
        results.append({
            "topology": stack.topology.describe(), "workers_write_artifacts": stack.writes, "label": stack.label,
            "median_jobs_per_s": medians,
            "speedup_over_1_worker": {n: round(v / one, 3) for n, v in medians.items()} if one else None,
            "speedup_2w_per_round": same_round,
            "server_rss_mib": machine.mib(machine.rss_of(stack.store.process_groups().get("mlflow_server", []))),
            "batches": stack.batches,
        })  # fmt: skip
    return results


def plot(results: list[dict[str, Any]], path: Path, facts: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for result in results:
        counts = sorted(int(n) for n in result["batches"] if result["batches"][n])
        values = [[b["jobs_per_s"] for b in result["batches"][str(n)]] for n in counts]
        medians = [statistics.median(v) for v in values]
        low = [m - min(v) for m, v in zip(medians, values, strict=True)]
        high = [max(v) - m for m, v in zip(medians, values, strict=True)]
        others = [b["other_processes_cores_busy"] for bs in result["batches"].values() for b in bs]
        label = f"{result['label']} (other processes: {statistics.fmean(others):.1f} cores)"
        ax.errorbar(counts, medians, yerr=[low, high], marker="o", capsize=4, label=label)
    ax.set_xlabel("worker processes (concurrency 1 each)")
    ax.set_ylabel("registrations per second (enqueue → webhook received)")
    ax.set_xticks(sorted({int(n) for r in results for n in r["batches"]}))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"MLflow server on PostgreSQL, {facts['cores']} cores, {facts['date_utc'][:10]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    args = parse_args(argv)
    if args.replot:
        import json

        saved = json.loads(args.output.read_text())
        plot(saved["results"], args.plot, saved["machine"])
        print(f"wrote {args.plot}")
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    facts = machine.machine_info()
    facts["loadavg_at_start"] = machine.loadavg()
    started = time.perf_counter()
    compose_writes = topologies.compose_topology().workers_write_artifacts  # every topology stores artifacts so
    runs = [(name, compose_writes) for name in args.topologies]
    runs += [("compose", not compose_writes)] if args.uploads_too else []
    with ExitStack() as stack:
        stacks = [start_stack(stack, name, args, writes=writes) for name, writes in runs]
        results = run_rounds(stacks, args)
    report = {
        "benchmark": "bench.scale", "machine": facts,
        "parameters": {"topologies": args.topologies, "uploads_too": args.uploads_too, "workers": args.workers,
                       "batch": args.batch, "reps": args.reps, "seed": args.seed},
        "results": results, "loadavg_at_end": machine.loadavg(), "duration_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    reports.write_json(args.output, report)
    plot(results, args.plot, facts)
    print()
    for result in results:
        print(f"{result['label']:<34} jobs/s {result['median_jobs_per_s']}  speed-up {result['speedup_over_1_worker']}"
              f"  server RSS {result['server_rss_mib']} MiB")  # fmt: skip
    print(f"wrote {args.output} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
