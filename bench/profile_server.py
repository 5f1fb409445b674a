"""Investigation: why ``mlflow server --workers N`` (uvicorn, several processes) stalls keep-alive requests.

For each way of serving MLflow it starts the server on a new PostgreSQL database and measures,
from one client: ``GET /health`` and a real API call (``experiments/get-by-name``) on one
kept-alive ``requests.Session`` (what MLflow's client does) and on a new connection per request,
the server's process count and RSS. ``--strace`` also records which sockets the server sets
``TCP_NODELAY`` on and how many ``sendto`` calls one response takes.

    .venv/bin/python -m bench.profile_server [--requests 60] [--strace]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench import machine, reports, stats
from devtools import devstack

NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
GTHREAD = "--worker-class gthread --threads 4 --timeout 120 --keep-alive 30"
#: label -> (--workers, extra flags, extra env)
CONFIGS: dict[str, tuple[int | None, list[str], dict[str, str]]] = {
    "uvicorn default (4 workers, job runner on)": (None, [], {}),
    "uvicorn default (4 workers, job runner off)": (None, [], NO_JOBS),
    "uvicorn --workers 1": (1, [], NO_JOBS),
    "uvicorn --workers 2": (2, [], NO_JOBS),
    "uvicorn --workers 2, listening socket TCP_NODELAY": (2, [], NO_JOBS),
    "gunicorn sync --workers 2 (compose)": (2, ["--gunicorn-opts", "--worker-class sync --timeout 120"], NO_JOBS),
    "gunicorn gthread --workers 2 --threads 4": (2, ["--gunicorn-opts", GTHREAD], NO_JOBS),
}  # fmt: skip


def timed(call: Any, n: int) -> dict[str, float]:
    values = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        values.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(values), 2), "p95_ms": round(stats.percentile(values, 95), 2)}


def measure(url: str, n: int) -> dict[str, Any]:
    import requests

    api = f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    session = requests.Session()
    session.get(f"{url}/health").raise_for_status()
    out = {
        "health_keepalive": timed(lambda: session.get(f"{url}/health").raise_for_status(), n),
        "api_keepalive": timed(lambda: session.get(api).raise_for_status(), n),
        "health_new_connection": timed(lambda: requests.get(f"{url}/health").raise_for_status(), n),
        "api_new_connection": timed(lambda: requests.get(api).raise_for_status(), n),
    }
    session.close()
    return out


@contextmanager
def nodelay_patch(work: Path) -> Iterator[dict[str, str]]:
    """A sitecustomize that sets TCP_NODELAY on uvicorn's listening socket (inherited by accepted ones)."""
    folder = work / "nodelay"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import socket\n"
        "import uvicorn.config\n"
        "_bind = uvicorn.config.Config.bind_socket\n"
        "def bind_socket(self):\n"
        "    sock = _bind(self)\n"
        "    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
        "    return sock\n"
        "uvicorn.config.Config.bind_socket = bind_socket\n"
    )
    yield {"PYTHONPATH": str(folder)}


def server_tree(port: int) -> list[int]:
    return [p for pid in machine.pids_matching("mlflow", "server", f"--port {port}") for p in machine.tree_pids(pid)]


def strace_server(port: int, url: str, work: Path) -> dict[str, Any]:
    """Attach strace to the server's processes for a few kept-alive requests; count NODELAY and sends."""
    pids = server_tree(port)
    log = work / f"strace-{port}.txt"
    args = ["strace", "-f", "-e", "trace=setsockopt,sendto,write,accept4", "-o", str(log)]
    for pid in pids:
        args += ["-p", str(pid)]
    tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # strace attaches asynchronously; nothing here is timed
    import requests

    with requests.Session() as session:
        for _ in range(3):
            session.get(f"{url}/health")
        for _ in range(3):
            requests.get(f"{url}/health")
    time.sleep(0.5)
    tracer.terminate()
    tracer.wait(timeout=10)
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [line for line in text.splitlines() if "accept4" in line or "NODELAY" in line or "HTTP/1.1 200" in line
             or "sendto" in line]  # fmt: skip
    return {
        "accepts": sum("accept4(" in line and "= -1" not in line for line in lines),
        "nodelay_setsockopt": sum("TCP_NODELAY" in line for line in lines),
        "sends": sum("sendto(" in line or ("write(" in line and "HTTP" in line) for line in lines),
        "excerpt": lines[:30],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = devstack.scratch_dir("hokusai-profile-server-")
    report: dict[str, Any] = {"machine": machine.machine_info(), "loadavg_before": Path("/proc/loadavg").read_text()}
    try:
        for label, (workers, extra, env) in CONFIGS.items():
            if args.only and args.only not in label:
                continue
            with ExitStack() as stack:
                env = dict(env)
                if "TCP_NODELAY" in label:
                    env.update(stack.enter_context(nodelay_patch(work)))
                backend = stack.enter_context(devstack.postgres_database())
                port = devstack.free_port()
                url = stack.enter_context(devstack.mlflow_server(
                    backend_uri=backend, artifacts_dir=work / f"served-{port}", port=port, workers=workers,
                    extra_args=extra, env=env))  # fmt: skip
                time.sleep(3)  # let every worker process finish importing (not timed)
                result = measure(url, args.requests)
                pids = server_tree(port)
                result["server_processes"] = len(pids)
                result["server_rss_mib"] = machine.mib(machine.rss_of(pids))
                if args.strace and shutil.which("strace"):
                    result["strace"] = strace_server(port, url, work)
                report[label] = result
                print(label, json.dumps({k: v for k, v in result.items() if k != "strace"}), flush=True)
                if "strace" in result:
                    s = result["strace"]
                    print(f"   strace: accepts {s['accepts']}, TCP_NODELAY setsockopt {s['nodelay_setsockopt']}, "
                          f"sends {s['sends']}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["loadavg_after"] = Path("/proc/loadavg").read_text()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--only", default="", help="run only configurations whose label contains this")
    parser.add_argument("--output", type=Path, default=reports.RESULTS_DIR / "profile-server.json")
    args = parser.parse_args(argv)
    reports.write_json(args.output, run(args))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
