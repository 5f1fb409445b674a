"""Machine facts for the reports and what processes use, read from /proc (Linux; no psutil).

``machine_info`` and ``loadavg`` describe the machine a report ran on; the process tree, RSS and
CPU seconds of process groups are read from /proc.
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    import celery
    import mlflow
    import sklearn

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory": mem_total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "celery": celery.__version__,
        "scikit_learn": sklearn.__version__,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(child) for child in text)
    except OSError:
        pass
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_of(pids: list[int]) -> int:
    """Summed RSS of distinct processes, in bytes."""
    return sum(_rss_bytes(pid) for pid in set(pids))


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes (Linux /proc)."""
    total, pending, seen = 0, [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _rss_bytes(current)
        pending.extend(_children(current))
    return total


@dataclass
class MemorySampler:
    """Samples the RSS of worker process trees every ``interval_s`` on a thread; keeps the peaks."""

    pids: list[int]
    interval_s: float = 0.25
    peak_total: int = 0
    peak_each: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        values = {pid: tree_rss(pid) for pid in self.pids}
        self.samples += 1
        self.peak_total = max(self.peak_total, sum(values.values()))
        for pid, value in values.items():
            self.peak_each[pid] = max(self.peak_each.get(pid, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()


def mib(value: int) -> float:
    return round(value / (1024 * 1024), 1)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its own, not its reaped children's), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(*needles: str) -> list[int]:
    """Processes whose command line holds every needle (e.g. the server's port, a database name)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            line = _cmdline(int(entry.name))
            if line and all(needle in line for needle in needles):
                found.append(int(entry.name))
    return found


def tree_pids(pid: int) -> list[int]:
    seen: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        if current not in seen:
            seen.append(current)
            pending.extend(_children(current))
    return seen


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (every process on the machine)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICKS


def cpu_snapshot(groups: Mapping[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes, plus ``system`` (the whole machine)."""
    snapshot = {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
    snapshot["system"] = system_busy_seconds()
    return snapshot
