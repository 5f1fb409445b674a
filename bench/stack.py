"""Throughput and queue latency through the real compose stack: 1 worker container against 2.

    REDIS_PUBLISH_PORT=16379 WORKER_CONCURRENCY=1 sudo scripts/stack.sh up
    sudo .hokusai/stack/pipeline-venv/bin/python -m bench.stack --batch 30 --reps 3

Runs against the stack ``scripts/stack.sh up`` brought up (the same ``COMPOSE_PROJECT_NAME``;
``COMPOSE_FILE`` as the script sets it), from the host through its published ports, like
``scripts/stack_check.py`` (whose helpers it uses). With ``WORKER_CONCURRENCY=1`` one container is
one task process, as ``bench.scale``'s workers are. Every round scales the ``worker`` service to 1
and to 2 containers (the order alternating) and enqueues a batch of jobs for one uploaded model
with the workers' consumers cancelled (Celery remote control, so the batch is queued in full, not
at the host's enqueue rate); it is timed from turning them back on to the sample receiver accepting
the last event (the receiver's log times). Queue latency: single jobs on one idle container, enqueue
to the receiver accepting the event. Writes ``bench/results/stack-latest.json``, beside ``bench.scale``'s process
topology figure (``scale-latest.json``) when there is one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results"


def stack_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_check", ROOT / "scripts/stack_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack_check"] = module
    spec.loader.exec_module(module)
    return module


def accepted_at(sc: ModuleType, event_ids: set[str], timeout_s: float) -> dict[str, float]:
    """event id -> when the receiver accepted it (epoch seconds, from its log line's time)."""

    def read() -> dict[str, float] | None:
        times: dict[str, float] = {}
        for line in sc.service_logs("receiver").splitlines():
            for event_id in event_ids:
                if f"received {event_id} (signatures True/True, duplicate False): answering 2" in line:
                    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
                    times[event_id] = stamp.timestamp()
        return times if set(times) == event_ids else None

    return dict(sc.wait_until(read, timeout_s, f"{len(event_ids)} events accepted", interval_s=0.5))


def scale(sc: ModuleType, workers: int) -> None:
    sc.compose("up", "-d", "--wait", "--wait-timeout", "240", "--no-recreate", "--scale", f"worker={workers}")
    sc.wait_healthy("worker", count=workers)


def consumers(on: bool, workers: int) -> None:
    """Every worker consumes the registration queue, or none does (Celery remote control, from the host)."""
    from hokusai_registry.contract import REGISTRATION_QUEUE
    from hokusai_registry.settings import Settings
    from producers.broker import publisher_app

    control = publisher_app(Settings().redis_url).control
    call = control.add_consumer if on else control.cancel_consumer
    replies = call(REGISTRATION_QUEUE, reply=True, timeout=10)
    assert len(replies) == workers, f"{len(replies)} of {workers} workers answered: {replies}"


def batch(sc: ModuleType, stack: Any, size: int, workers: int) -> float:
    """Jobs per second for one batch, queued in full before any worker takes one (consumers off)."""
    consumers(False, workers)
    try:
        job_ids = stack.enqueue(size, "bench")
    finally:
        started = time.time()
        consumers(True, workers)
    done = stack.wait_jobs(job_ids, timeout_s=900)
    events = {sc.event_id_of(status) for status in done.values()}
    finished = max(accepted_at(sc, events, 120).values())
    return size / (finished - started)


def latency(sc: ModuleType, stack: Any) -> float:
    """Seconds from enqueue to the receiver accepting the event, for one job on an idle worker."""
    started = time.time()
    (job_id,) = stack.enqueue(1, "bench-latency")
    status = stack.wait_jobs([job_id], timeout_s=120)[job_id]
    event_id = sc.event_id_of(status)
    return accepted_at(sc, {event_id}, 60)[event_id] - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=30, help="jobs per batch (default 30)")
    parser.add_argument("--reps", type=int, default=3, help="rounds (default 3), each 1 and 2 containers")
    parser.add_argument("--latency-jobs", type=int, default=10, help="single jobs for the queue latency")
    parser.add_argument("--output", type=Path, default=RESULTS / "stack-latest.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("COMPOSE_FILE", "docker-compose.yml:docker-compose.stand-ins.yml")
    os.environ.setdefault("COMPOSE_PROJECT_NAME", "hokusai")
    sc = stack_check()
    stack = sc.Stack.discover()
    concurrency = sc.inspect(sc.containers("worker")[0].id)["Config"]["Cmd"]
    sc._pipeline(stack)  # uploads the model every job of the batches registers
    scale(sc, 1)
    batch(sc, stack, max(4, args.batch // 4), 1)  # warm-up: each process's first job imports and connects
    latencies = [latency(sc, stack) for _ in range(args.latency_jobs)]
    rates: dict[int, list[float]] = {1: [], 2: []}
    for round_index in range(args.reps):
        for workers in (1, 2) if round_index % 2 == 0 else (2, 1):
            scale(sc, workers)
            rate = batch(sc, stack, args.batch, workers)
            rates[workers].append(rate)
            print(f"round {round_index + 1}: {workers} container(s): {rate:.2f} jobs/s", flush=True)
    ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
    process = RESULTS / "scale-latest.json"
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "worker_command": concurrency,
        "batch": args.batch,
        "jobs_per_s": {str(k): v for k, v in rates.items()},
        "median_jobs_per_s": {str(k): statistics.median(v) for k, v in rates.items()},
        "ratio_2_over_1_by_round": ratios,
        "median_ratio_2_over_1": statistics.median(ratios),
        "queue_latency_s": latencies,
        "median_queue_latency_ms": 1000 * statistics.median(latencies),
        "process_topology_results": str(process.relative_to(ROOT)) if process.exists() else None,
        "load_average": os.getloadavg(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"2 containers / 1: {result['median_ratio_2_over_1']:.2f} (by round {[round(r, 2) for r in ratios]}); "
        f"queue latency median {result['median_queue_latency_ms']:.0f} ms; wrote {args.output.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
