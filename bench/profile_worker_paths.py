"""Investigation: how 2 workers scale over 1 by the path their MLflow calls take to PostgreSQL.

For each mode a stack of its own (Redis, a new PostgreSQL database, a receiver, 2 ``celery -A worker
worker`` processes of concurrency 1, compose's server flags and environment):

* ``shared``: both workers go through one server as docker-compose.yml runs it (gunicorn ``sync``, 2
  processes), writing the served artifacts themselves;
* ``split``: each worker has a single-process server of its own (same flags, database and artifact folder);
* ``direct``: docker-compose.yml's own topology: the workers write the server's database
  (``TRACKING_DATABASE_URI``) and its artifact folder; the server only created the experiment.

Every round runs one batch of each (mode, worker count) in a shuffled order; a batch enqueues
``--batch`` jobs at once and waits until the receiver accepted every event. Reported per batch:
jobs/s and how many cores the machine kept busy (``/proc/stat``). Writes
``bench/results/worker-paths.json``.

    .venv/bin/python -m bench.profile_worker_paths [--batch 60] [--reps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import machine, reports, stack_setup, stats, topologies, workload
from bench.queue_bench import QueueBench
from devtools import devstack

MODES = ("shared", "split", "direct")


def start(stack: ExitStack, mode: str, batch: int) -> Any:
    """One mode's stack, warmed up (every worker process has opened its store)."""
    from devtools.receiver import WebhookReceiver
    from producers.enqueue import enqueue_registration

    work = devstack.scratch_dir(f"hokusai-paths-{mode}-")
    stack.callback(shutil.rmtree, work, ignore_errors=True)
    compose = topologies.compose_topology()
    if mode != "direct":  # through the server
        compose = dataclasses.replace(compose, workers_on_database=False)
    single = dataclasses.replace(compose, name="compose flags, 1 process", workers=1)
    redis_url = stack.enter_context(stack_setup.own_redis(work))
    store = stack.enter_context(
        stack_setup.mlflow_store("postgres", work, topology=single if mode == "split" else compose)
    )
    receiver = stack.enter_context(WebhookReceiver(stack_setup.SECRET))
    per_worker: list[dict[str, str]] = [{}, {}]
    if mode == "split":
        server = devstack.mlflow_server(
            backend_uri=store.backend or "",
            artifacts_dir=work / "served",
            workers=1,
            extra_args=compose.flags,
            env=dict(compose.env),
        )
        second = stack.enter_context(server)
        per_worker = [{}, {"MLFLOW_TRACKING_URI": second}]
    staging = work / "staging"
    staging.mkdir(parents=True)
    model_dir = workload.stage_model(workload.make_model(), staging, workload.explicit_requirements())
    queue = QueueBench(store, redis_url, model_dir, staging, receiver, workers=2, worker_env=per_worker)
    queue.start()
    stack.callback(queue.stop)
    for _ in range(4):
        enqueue_registration(workload.job_fields(model_dir), settings=queue.settings)
    receiver.wait_for(4, timeout_s=300)
    return queue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker_paths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=60, help="jobs per batch (default 60)")
    parser.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--output", type=Path, default=reports.RESULTS_DIR / "worker-paths.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    batches: dict[str, dict[str, list[dict[str, Any]]]] = {m: {"1": [], "2": []} for m in MODES}
    with ExitStack() as stack:
        queues = {mode: start(stack, mode, args.batch) for mode in MODES}
        for round_no in range(args.reps):
            order = [(mode, count) for mode in MODES for count in (1, 2)]
            rng.shuffle(order)
            for mode, count in order:
                queues[mode].use(count)
                outcome = queues[mode].batch(args.batch)
                batches[mode][str(count)].append(outcome)
                print(f"  round {round_no + 1}: {mode}, {count} worker(s): {outcome['jobs_per_s']:.2f} jobs/s, "
                      f"{outcome['machine_cores_busy']} cores busy", flush=True)  # fmt: skip
    report: dict[str, Any] = {"benchmark": "bench.profile_worker_paths", "machine": machine.machine_info(),
                              "parameters": vars(args) | {"output": str(args.output)}, "modes": {}}  # fmt: skip
    for mode in MODES:
        one = [b["jobs_per_s"] for b in batches[mode]["1"]]
        two = [b["jobs_per_s"] for b in batches[mode]["2"]]
        pairs = stats.per_round_ratios(batches[mode]["1"], batches[mode]["2"])
        report["modes"][mode] = {
            "median_jobs_per_s": {"1": statistics.median(one), "2": statistics.median(two)},
            "speedup_2w_per_round": pairs, "speedup_2w_median": statistics.median(pairs),
            "cores_busy_2w": [b["machine_cores_busy"] for b in batches[mode]["2"]], "batches": batches[mode],
        }  # fmt: skip
        print(f"{mode:>7}: 1w {statistics.median(one):.2f} jobs/s, 2w {statistics.median(two):.2f} jobs/s, "
              f"2w/1w per round {pairs}")  # fmt: skip
    reports.write_json(args.output, report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
