"""Celery's remote control of real workers: the `celery` commands answer and nothing of it is quarantined.

Remote-control replies travel on ``<uuid>.reply.celery.pidbox`` lists that the asking process pops
through this app's checking transport; broadcasts reach the worker's pidbox consumer, which shares
the consumer's decode-error callback. Neither is a product queue, so neither is judged as poison,
while a poison message on a product queue still is.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis
from celery import Celery

from devtools import devstack
from hokusai_registry import quarantine
from hokusai_registry.contract import REGISTRATION_QUEUE
from tests.worker_process import ROOT, WorkerProcess, wait_until

pytestmark = pytest.mark.slow


def readme_worker(env: Mapping[str, str], log_dir: Path) -> WorkerProcess:
    """A worker with mingle and gossip on, as the README starts it (`celery -A worker worker --loglevel INFO`)."""
    worker = WorkerProcess(env, log_dir)
    worker.command = [arg for arg in worker.command if arg not in {"--without-gossip", "--without-mingle"}]
    return worker


def node_name(worker: devstack.WorkerProcess) -> str:
    return f"{worker.name}@{socket.gethostname()}"  # what --hostname NAME@%h expands to


def refused_pickle(worker: devstack.WorkerProcess) -> bool:
    return "Can't decode message body" in worker.log_text()


def exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def celery(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `celery -A worker ...` command line, with the environment the docs tell an operator to set."""
    command = [sys.executable, "-m", "celery", "-A", "worker", *args]
    return subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)


def test_inspect_status_and_control_answer_and_quarantine_only_product_poison(
    worker_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = quarantine.store(client)
    with readme_worker(worker_env, tmp_path) as first, readme_worker(worker_env, tmp_path) as second:
        assert first.process is not None and second.process is not None
        # the second worker's mingle asked the first at start-up; the reply came on its pidbox reply queue
        assert "mingle: sync with 1 nodes" in second.log_text(), second.log_tail()
        nodes = [node_name(first), node_name(second)]
        answers = {
            " ".join(args): celery(*args, "--timeout", "20", "--destination", ",".join(nodes))
            for args in (("inspect", "ping"), ("inspect", "stats"), ("inspect", "active"))
        }
        answers["status"] = celery("status", "--timeout", "5")  # no destination: every worker that answers
        for command, done in answers.items():
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            assert all(node in done.stdout for node in nodes), (command, done.stdout)
            assert "quarantined" not in done.stderr, (command, done.stderr)
        assert "2 nodes online" in answers["status"].stdout
        assert answers["inspect stats"].stdout.count('"max-concurrency"') == 2, answers["inspect stats"].stdout

        # a broadcast the workers cannot decode (pickle) is Celery's pidbox traffic: logged by Celery, not kept
        sender = Celery("pickle-control", broker=redis_url, set_as_current=False)
        sender.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
        sender.control.broadcast("ping", reply=False)
        for worker in (first, second):
            wait_until(functools.partial(refused_pickle, worker), timeout_s=20,
                       what=f"{worker.name} to refuse the pickle broadcast")  # fmt: skip
        assert store.list() == [], [(record.queue, record.reason) for record in store.list()]

        # a real poison message on a product queue is still quarantined
        client.lpush(REGISTRATION_QUEUE, b"\x80 not JSON")
        (record,) = wait_until(store.list, timeout_s=30, what="the poison message to be quarantined")
        assert record.queue == REGISTRATION_QUEUE and "not JSON" in record.reason

        # Celery's shutdown command sends no reply, so the command itself always ends "No nodes replied"
        celery("control", "shutdown", "--timeout", "2")
        for worker in (first, second):
            assert worker.process is not None
            wait_until(functools.partial(exited, worker.process), timeout_s=60,
                       what=f"{worker.name} to exit after `control shutdown`")  # fmt: skip
            assert worker.process.returncode == 0, worker.log_tail()
            assert "Got shutdown from remote" in worker.log_text(), worker.log_tail()
        logs = first.log_text() + second.log_text()

    assert "Unrecoverable error" not in logs
    assert [record.raw for record in store.list()] == [b"\x80 not JSON"]
