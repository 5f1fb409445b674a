"""What ``bench.run`` reports per store: ratios with bootstrap intervals, verdicts against the targets, the table."""

from __future__ import annotations

import statistics
from typing import Any

from bench import stats
from bench.stack_setup import STORES
from bench.variants import VARIANTS

TARGETS = {
    "registry_over_bare": {"ratio": "3/1b", "op": "<=", "limit": 1.02, "store": "both"},
    "old_over_registry": {"ratio": "2/3", "op": ">=", "limit": 20.0, "store": "sqlite"},
    "queue_minus_bare_ms": {"ratio": "4-1 (ms, 1 worker, paired)", "op": "<=", "limit": 10.0, "store": "sqlite"},
    "requests_per_queued_job": {"ratio": "requests/queued job", "op": "<=", "limit": 16, "store": "postgres"},
    "throughput_2w_over_1w": {"ratio": "2w/1w jobs/s (paired)", "op": ">=", "limit": 1.7, "store": "postgres"},
}


#: Paired estimates (see ``ratios_of``): the verdicts use them; the unpaired ones are reported beside.
PAIRED = {"queue_minus_bare_ms": "queue_minus_bare_ms_paired", "throughput_2w_over_1w": "throughput_2w_over_1w_paired"}


LABELS = {
    "bare": "1 bare MLflow (log_model + register_model)",
    "bare_sig": "1b bare MLflow + signature + input example",
    "old": "2 old path (pyfunc, inferred reqs, 2 versions)",
    "registry": "3 HokusaiModelRegistry.register_baseline",
    "registry_nogit": "3b register_baseline, cwd outside git",
    "queue_1w": "4 queue: enqueue -> webhook, 1 worker",
    "queue_2w": "4 queue: enqueue -> webhook, 2 workers",
}


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
        "registry_over_bare_ci95": stats.bootstrap_ratio(raw["registry"], raw["bare_sig"]),
        "registry_nogit_over_bare": div(med["registry_nogit"], med["bare_sig"]),
        "registry_nogit_over_bare_ci95": stats.bootstrap_ratio(raw["registry_nogit"], raw["bare_sig"]),
        "old_over_registry": div(med["old"], med["registry"]),
        "queue_over_bare": div(med["queue_1w"], med["bare"]),
        "queue_2w_over_bare": div(med["queue_2w"], med["bare"]),
        "queue_minus_bare_ms": round(med["queue_1w"] - med["bare"], 2) if med["queue_1w"] and med["bare"] else None,
        "queue_minus_bare_ms_ci95": stats.bootstrap_difference_ms(raw["queue_1w"], raw["bare"]),
        # Both ran once in every round: the median of the per-round differences, which a slow
        # minute of the machine shifts for both (how far its speed drifts: bench/README.md).
        "queue_minus_bare_ms_paired": _paired_median_ms(raw["queue_1w"], raw["bare"]),
        "queue_minus_bare_ms_paired_ci95": stats.bootstrap_paired_difference_ms(raw["queue_1w"], raw["bare"]),
        "requests_per_queued_job": requests.get("queued_job"),
        "requests_per_queued_job_through_server": requests.get("queued_job_through_server"),
        "requests_per_bare": requests.get("bare"),
        "requests_per_registry": requests.get("registry"),
        "throughput_2w_over_1w": div(two, one),
        "throughput_2w_over_1w_range": _batch_range(result["throughput"]),
        # Batches alternate 1w, 2w / 2w, 1w: the median of each pair's ratio.
        "throughput_2w_over_1w_per_pair": (
            pairs := stats.per_round_ratios(result["throughput"]["1"]["batches"], result["throughput"]["2"]["batches"])
        ),
        "throughput_2w_over_1w_paired": round(statistics.median(pairs), 3) if pairs else None,
        "throughput_2w_over_1w_paired_ci95": (
            [round(bound, 3) for bound in interval] if (interval := stats.bootstrap_median(pairs)) else None
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
    stores = [s for s in STORES if s in report["stores"]]
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
