"""Investigation: what ``task_track_started`` and ``result_extended`` cost per task.

Against a ``redis-server`` of its own, with the product's Celery result backend settings, for the two
tasks of a job (register, webhook) with realistic arguments and results (``devtools.builders``):
the bytes each stored result holds with and without ``result_extended``, and the time of the extra
STARTED write that ``task_track_started`` makes (SET + PUBLISH), median of ``--n``.

    .venv/bin/python -m bench.profile_celery [--n 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench import machine, reports, stack_setup
from devtools import builders, devstack


def backend(redis_url: str, *, extended: bool) -> Any:
    from celery import Celery

    app = Celery("profile", broker=redis_url, backend=redis_url)
    app.conf.update(result_serializer="json", accept_content=["json"], result_extended=extended)
    return app.backend


def request(task: str, args: list[Any]) -> Any:
    return SimpleNamespace(task=task, args=args, kwargs={}, hostname="celery@bench", retries=0,
                           delivery_info={"routing_key": "hokusai.registrations"}, group=None, parent_id=None,
                           children=[], stamps=None, ignore_result=False)  # fmt: skip


def meta_bytes(be: Any, result: Any, state: str, req: Any) -> int:
    return len(be.encode(be._get_result_meta(result, state, None, req, encode=True)))


def store_ms(be: Any, state: str, result: Any, req: Any, n: int) -> float:
    times = []
    for _ in range(n):
        task_id = str(uuid.uuid4())
        start = time.perf_counter()
        be.store_result(task_id, result, state, request=req)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_celery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--output", type=Path, default=reports.RESULTS_DIR / "profile-celery.json")
    args = parser.parse_args(argv)
    job = builders.job()
    job_payload = job.model_dump(mode="json")
    result = builders.registration_result(job)
    webhook_result = {"job_id": str(job.job_id), "model_name": result["model_name"], "version": result["version"],
                      "status": "delivered", "event_id": str(uuid.uuid4()), "attempt": 1}  # fmt: skip
    tasks = {"register": (request("hokusai.register_model", [job_payload]), result),
             "webhook": (request("hokusai.emit_webhook", [result]), webhook_result)}  # fmt: skip
    report: dict[str, Any] = {"machine": machine.machine_info(), "loadavg": machine.loadavg(), "n": args.n}
    work = devstack.scratch_dir("hokusai-profile-celery-")
    with stack_setup.own_redis(work) as redis_url:
        for extended in (True, False):
            be = backend(redis_url, extended=extended)
            key = "extended" if extended else "plain"
            report[key] = {
                name: {
                    "success_meta_bytes": meta_bytes(be, res, "SUCCESS", req),
                    "started_meta_bytes": meta_bytes(be, {"pid": 1, "hostname": "celery@bench"}, "STARTED", req),
                    "started_write_ms": store_ms(be, "STARTED", {"pid": 1, "hostname": "celery@bench"}, req, args.n),
                    "success_write_ms": store_ms(be, "SUCCESS", res, req, args.n),
                }
                for name, (req, res) in tasks.items()
            }
    for key in ("extended", "plain"):
        print(key, report[key])
    reports.write_json(args.output, report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
