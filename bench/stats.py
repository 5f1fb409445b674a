"""Statistics of the benchmarks: nearest-rank percentiles, summaries in milliseconds, bootstrap intervals.

Every interval is a 95% bootstrap (seeded, so a report can be recomputed from its raw samples).
"""

from __future__ import annotations

import random
import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))  # ceil(q/100 * n)
    return ordered[rank - 1]


def bootstrap_ratio(
    top: list[float], bottom: list[float], *, rounds: int = 2000, seed: int = 13
) -> tuple[float, float] | None:
    """95% bootstrap interval of median(top) / median(bottom) (each resampled with replacement)."""
    if not top or not bottom:
        return None
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(top, k=len(top))) / statistics.median(rng.choices(bottom, k=len(bottom)))
        for _ in range(rounds)
    )
    return round(ratios[int(0.025 * rounds)], 3), round(ratios[int(0.975 * rounds) - 1], 3)


def bootstrap_difference_ms(top: list[float], bottom: list[float], *, rounds: int = 2000, seed: int = 13) -> Any:
    """95% bootstrap interval of median(top) - median(bottom), seconds in, milliseconds out."""
    if not top or not bottom:
        return None
    rng = random.Random(seed)
    diffs = sorted(
        statistics.median(rng.choices(top, k=len(top))) - statistics.median(rng.choices(bottom, k=len(bottom)))
        for _ in range(rounds)
    )
    return round(1000 * diffs[int(0.025 * rounds)], 2), round(1000 * diffs[int(0.975 * rounds) - 1], 2)


def bootstrap_paired_difference_ms(
    top: list[float], bottom: list[float], *, rounds: int = 2000, seed: int = 13
) -> tuple[float, float] | None:
    """95% bootstrap interval of the median of ``top[i] - bottom[i]`` (rounds resampled), in ms."""
    interval = bootstrap_median([a - b for a, b in zip(top, bottom, strict=True)], rounds=rounds, seed=seed)
    return (round(1000 * interval[0], 2), round(1000 * interval[1], 2)) if interval else None


def bootstrap_median(values: list[float], *, rounds: int = 2000, seed: int = 13) -> tuple[float, float] | None:
    """95% bootstrap interval of the median of ``values`` (per-round differences or ratios, resampled)."""
    if not values:
        return None
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def per_round_ratios(ones: list[dict[str, Any]], twos: list[dict[str, Any]]) -> list[float]:
    """2w/1w of each round: the jobs/s of its 2-worker batch over its 1-worker batch (run next to each other)."""
    return [round(two["jobs_per_s"] / one["jobs_per_s"], 3) for one, two in zip(ones, twos, strict=False)]


def summarize(seconds: list[float]) -> dict[str, Any]:
    """Median, p95 (nearest rank), mean, min, max in milliseconds, and n."""
    if not seconds:
        return {"n": 0, "median_ms": None, "p95_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }
