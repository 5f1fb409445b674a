"""What one webhook attempt costs in the worker, and how much of it is making a new HTTP client.

    .venv/bin/python -m bench.profile_webhook [--reps 30]

Investigation tool behind the README's explanation of the queue overhead (no Redis needed).
``worker.tasks._send_event`` calls ``delivery.send_stored_event`` without a ``client``, so
``delivery.deliver`` opens (and closes) a new ``httpx.Client`` for every attempt; creating one
builds an SSL context and loads the CA bundle, even for an http:// URL. This times, alternately:
``deliver(client=None)`` (what the worker does), ``deliver(client=<shared httpx.Client>)`` (what
a per-process client would do), and ``httpx.Client()`` creation alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench import stack_setup, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_webhook")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)

    import httpx

    from devtools import builders
    from devtools.receiver import WebhookReceiver
    from hokusai_registry.settings import Settings
    from worker.webhooks import delivery

    times: dict[str, list[float]] = {"deliver, new client per attempt (today)": [],
                                     "deliver, shared client": [], "httpx.Client() create + close": []}  # fmt: skip
    with WebhookReceiver(stack_setup.SECRET) as receiver:
        settings = Settings(webhook_url=receiver.url, webhook_secret=stack_setup.SECRET, webhook_allow_http=True)
        secret = delivery.webhook_secret(settings)
        shared = httpx.Client()
        for rep in range(args.reps + 1):
            event = builders.event(str(rep + 1))  # two distinct events a round (ids differ by version)
            event2 = builders.event(str(rep + 1_000_001))
            start = time.perf_counter()
            delivery.deliver(event, url=receiver.url, secret=secret, settings=settings)
            own = time.perf_counter() - start
            start = time.perf_counter()
            delivery.deliver(event2, url=receiver.url, secret=secret, settings=settings, client=shared)
            reused = time.perf_counter() - start
            start = time.perf_counter()
            with httpx.Client():
                pass
            create = time.perf_counter() - start
            if rep:  # the first round is warm-up
                times["deliver, new client per attempt (today)"].append(own)
                times["deliver, shared client"].append(reused)
                times["httpx.Client() create + close"].append(create)
        shared.close()
    print(f"medians over {args.reps} alternating repetitions")
    for label, values in times.items():
        print(
            f"  {label:<44}{statistics.median(values) * 1000:>8.1f} ms"
            f"   p95 {stats.percentile(values, 95) * 1000:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
