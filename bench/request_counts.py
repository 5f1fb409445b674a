"""HTTP requests each ``bench.run`` variant and each queued job makes to the tracking server (outside timings).

A counting proxy (``devtools.request_counter``) sits in front of the server; the in-process
variants and one extra worker process use it, ``CALLS`` times each.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from bench import workload
from bench.stack_setup import Store, activate, producer_settings, worker_env
from bench.variants import Variants, silenced
from devtools import devstack

#: Calls of each kind counted (after one uncounted warm-up call).
CALLS = 3


def count_requests(store: Store, redis_url: str, variants: Variants, receiver: Any) -> dict[str, Any]:
    """HTTP requests to the tracking server per bare / registry call and per queued job (outside timings)."""
    from devtools.request_counter import RequestCounter

    with RequestCounter(store.tracking_uri) as proxy:
        activate(proxy.url)
        try:
            counted = _in_process(proxy, variants)
        finally:
            activate(store.tracking_uri)
        counted |= _queued(proxy, store, redis_url, variants, receiver)
    return {"calls_each": CALLS, "per_call": {name: total for name, (total, _) in counted.items()},
            "by_route_per_call": {name: routes for name, (_, routes) in counted.items()}}  # fmt: skip


def _in_process(proxy: Any, variants: Variants) -> dict[str, tuple[float, dict[str, float]]]:
    """bare, bare_sig and register_baseline in this process, through the proxy."""
    proxied = variants.make_registry(proxy.url)
    model = workload.make_model()
    signature, example = workload.signature_and_example(model)

    requirements = workload.explicit_requirements()

    def registry_call() -> None:
        proxied.register_baseline(model, "classification", workload.METADATA, signature=signature,
                                  input_example=example, pip_requirements=requirements)  # fmt: skip

    registry_call()  # the experiment is looked up once per process: not per call
    counted = {}
    for name, call in (("bare", variants.runners["bare"]), ("bare_sig", variants.runners["bare_sig"]),
                       ("registry", registry_call)):  # fmt: skip
        before = proxy.snapshot()
        for _ in range(CALLS):
            with silenced():
                call()
        counted[name] = _per_call(proxy.snapshot() - before)
    return counted


def _queued(
    proxy: Any, store: Store, redis_url: str, variants: Variants, receiver: Any
) -> dict[str, tuple[float, dict[str, float]]]:
    """Queued jobs as the stack runs them, and (when its workers write the database) through the server."""
    from producers.enqueue import enqueue_registration

    ways = {"queued_job": store.workers_database}
    ways |= {"queued_job_through_server": None} if store.workers_database else {}
    settings = producer_settings(redis_url, store.work / "producer", variants.staging)
    counted = {}
    for name, database in ways.items():
        proxied_store = dataclasses.replace(store, tracking_uri=proxy.url, workers_database=database)
        env = worker_env(proxied_store, redis_url, receiver.url, variants.staging)
        with devstack.WorkerProcess(env, store.work / "logs", concurrency=1):
            expected = len(receiver.events) + 1
            enqueue_registration(workload.job_fields(variants.model_dir), settings=settings)  # warm-up: opens the store
            receiver.wait_for(expected, timeout_s=120)
            before = proxy.snapshot()
            for _ in range(CALLS):
                expected = len(receiver.events) + 1
                enqueue_registration(workload.job_fields(variants.model_dir), settings=settings)
                receiver.wait_for(expected, timeout_s=120)
            delta = proxy.snapshot() - before
        counted[name] = _per_call(delta)
    return counted


def _per_call(delta: Any) -> tuple[float, dict[str, float]]:
    """Requests per call, in all and by route, from the proxy's count over ``CALLS`` calls."""
    return round(sum(delta.values()) / CALLS, 2), _by_route(delta, CALLS)


def _by_route(counts: Any, calls: int) -> dict[str, float]:
    """Requests per call by route: ids (``m-<hex>``) and artifact file names folded together."""
    routes: dict[str, float] = {}
    for key, count in counts.items():
        key = re.sub(r"/m-[0-9a-f]{32}", "/m-*", key)
        key = re.sub(r"(/mlflow-artifacts/artifacts)/.*", r"\1/*", key)
        routes[key] = routes.get(key, 0) + count / calls
    return {k: round(v, 2) for k, v in sorted(routes.items())}
