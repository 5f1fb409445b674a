"""The producer's durable outbox: jobs Redis could not take are spooled, then published once by job id.

Real Redis throughout: the tests' database on the host's Redis, a closed port for "unreachable", and,
where Redis must go away and come back, a ``redis-server`` of the test's own on a free port. Real
producer processes (one SIGKILLed while it spools, one while it flushes), two flushers at once, and a
real ``celery -A worker worker`` that registers every spooled job exactly once after Redis returns.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from devtools.builders import baseline_fields
from devtools.devstack import free_port, log_tail, port_open, stop_process_group
from hokusai_app.cli import main
from hokusai_app.cli_outbox import outbox
from hokusai_app.exit_codes import ExitCode
from hokusai_registry.contract import REGISTRATION_QUEUE
from hokusai_registry.errors import BrokerUnavailableError, ConfigurationError, InvalidJobError
from hokusai_registry.outbox import SPOOLED, is_temp, outbox_summary, spooled_entries, spooled_file
from hokusai_registry.settings import Settings, get_settings
from hokusai_registry.validation import validate_job
from producers import enqueue_registration, job_status, save_and_enqueue
from producers import outbox as producer_outbox
from producers.outbox import flush_outbox, list_spooled, read_spooled
from producers.staging import prune_staging
from tests.queue_helpers import client_app, job_fields, save_model_dir, versions_of_job
from tests.worker_process import ROOT, WorkerProcess, wait_until

#: An artifact the producer accepts without a local folder (only its scheme is checked).
REMOTE_MODEL = "s3://models/lead-scoring/1"


def remote_job(**changes: Any) -> dict[str, Any]:
    return baseline_fields(REMOTE_MODEL, **changes)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable(**changes: Any) -> Settings:
    """Settings whose Redis does not answer (a closed port), one short attempt."""
    return Settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0", enqueue_retry_s=0, **changes)


def queued_job_ids(redis_url: str) -> list[str]:
    """The job ids of the registration messages waiting in Redis, oldest first (duplicates kept)."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(REGISTRATION_QUEUE, 0, -1)
    finally:
        client.close()
    return [json.loads(item)["headers"]["id"] for item in reversed(raw)]


def producer_env(home: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """A pipeline process's environment: its own HOKUSAI_HOME, the given Redis, nothing of the test's."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HOKUSAI_", "REDIS_", "ALLOWED_"))}
    return {**kept, "PYTHONPATH": str(ROOT), "HOKUSAI_HOME": str(home), "REDIS_URL": redis_url, **extra}


def outbox_command(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``hokusai-registry outbox ARGS`` in a process of its own (the group, as the command runs it)."""
    code = "from hokusai_app.cli_outbox import outbox; outbox(prog_name='hokusai-registry outbox')"
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip


class OwnRedis:
    """A ``redis-server`` of this test's own that it stops and starts again on the same port (AOF on, so
    it keeps its data across the restart, as a production Redis must)."""

    def __init__(self, folder: Path, *, persistent: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        self.binary = binary
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "redis.log"
        self.config = folder / "redis.conf"
        persistence = "appendonly yes\nappendfsync always\n" if persistent else "appendonly no\n"
        self.config.write_text(
            f'port {self.port}\nbind 127.0.0.1\nsave ""\n{persistence}dir {folder}\nlogfile {self.log}\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.process = subprocess.Popen([self.binary, str(self.config)], start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_until(lambda: port_open("127.0.0.1", self.port), timeout_s=20, what="our redis-server")
        except TimeoutError:
            pytest.fail(f"redis-server did not start:\n{log_tail(self.log)}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)  # SIGTERM: Redis fsyncs its AOF and exits
            self.process = None
        wait_until(lambda: not port_open("127.0.0.1", self.port), timeout_s=10, what="our redis-server to stop")


def cli(group: Any, args: list[str], env: dict[str, str]) -> Any:
    """Invoke a command group in-process with ``env`` (settings read afresh, stdout and stderr apart)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(group, args)
        finally:
            get_settings.cache_clear()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- spooling
def test_an_unreachable_broker_spools_the_job_and_returns_its_id(caplog: pytest.LogCaptureFixture) -> None:
    settings = unreachable()
    caplog.set_level(logging.WARNING, logger="producers.outbox")

    job_id = enqueue_registration(remote_job(), settings=settings)

    path = spooled_file(settings.outbox_dir, job_id)
    assert settings.outbox_dir == (settings.hokusai_home / "outbox").resolve()
    stored = json.loads(path.read_text())
    assert stored["job"] == json.loads(json.dumps(validated(remote_job(job_id=job_id), settings)))
    assert stored["job_id"] == job_id and stored["format"] == 1
    assert "is unreachable while enqueueing job" in stored["reason"]
    assert [p.name for p in settings.outbox_dir.iterdir()] == [path.name]  # no temp file left behind
    (warning,) = [r for r in caplog.records if r.name == "producers.outbox"]
    assert warning.levelno == logging.WARNING
    assert job_id in warning.getMessage() and "`hokusai-registry outbox flush`" in warning.getMessage()
    assert "next successful enqueue" in warning.getMessage()
    status = job_status(job_id, settings)  # Redis is not asked: it is down
    assert status["state"] == SPOOLED == "SPOOLED"
    assert status["outbox"] == {"file": str(path), "spooled_at": stored["spooled_at"]}


def validated(fields: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return validate_job(fields, settings).model_dump(mode="json")


def test_hokusai_outbox_dir_moves_the_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOKUSAI_OUTBOX_DIR", str(tmp_path / "durable" / "outbox"))
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("ENQUEUE_RETRY_S", "0")
    get_settings.cache_clear()
    job_id = enqueue_registration(remote_job())
    assert (tmp_path / "durable" / "outbox" / f"{job_id}.json").is_file()


def test_no_secret_is_written_to_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "redis_password"
    secret_file.write_text("file-secret-4711\n")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret_file))
    monkeypatch.setenv("ENQUEUE_RETRY_S", "0")
    get_settings.cache_clear()
    caplog.set_level(logging.INFO)
    assert "file-secret-4711" in get_settings().redis_url  # the password is in force ...
    in_url = Settings(redis_url=f"redis://:url-secret-0815@127.0.0.1:{closed_port()}/0", enqueue_retry_s=0)

    spooled = [enqueue_registration(remote_job()), enqueue_registration(remote_job(), settings=in_url)]

    written = "".join(path.read_text() for path in get_settings().outbox_dir.iterdir())
    assert all(job_id in written for job_id in spooled)
    for secret in ("file-secret-4711", "url-secret-0815"):  # ... and written nowhere
        assert secret not in written
        assert all(secret not in record.getMessage() for record in caplog.records)


def test_an_invalid_job_is_never_spooled_even_with_redis_down() -> None:
    settings = unreachable()
    with pytest.raises(InvalidJobError) as caught:
        enqueue_registration(remote_job(model_type="vision"), settings=settings)
    assert str(caught.value).startswith("invalid registration job: model_type:")
    assert not settings.outbox_dir.exists()


def test_a_refused_password_is_raised_not_spooled(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url.replace("redis://", "redis://nobody:wrong@"), enqueue_retry_s=5)
    with pytest.raises(ConfigurationError, match="refused the credentials"):
        enqueue_registration(remote_job(), settings=settings)
    assert not settings.outbox_dir.exists()


def test_the_off_switch_raises_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOKUSAI_OUTBOX", "false")
    get_settings.cache_clear()
    settings = Settings(redis_url=f"redis://127.0.0.1:{closed_port()}/0", enqueue_retry_s=0)
    assert settings.hokusai_outbox is False
    with pytest.raises(BrokerUnavailableError, match="is unreachable while enqueueing job"):
        enqueue_registration(remote_job(), settings=settings)
    assert not settings.outbox_dir.exists()


def test_an_outbox_that_cannot_be_written_raises_the_broker_error(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox folder should be")
    settings = unreachable(hokusai_outbox_dir=blocked)
    with pytest.raises(BrokerUnavailableError) as caught:
        enqueue_registration(remote_job(), settings=settings)
    assert "is unreachable while enqueueing job" in str(caught.value)
    assert f"could not be kept in the outbox {blocked}" in str(caught.value)


# ---------------------------------------------------------------------------- flushing
def test_the_next_successful_enqueue_publishes_the_spooled_jobs(redis_url: str) -> None:
    down = unreachable()
    spooled = [enqueue_registration(remote_job(), settings=down) for _ in range(3)]
    up = Settings(redis_url=redis_url, hokusai_home=down.hokusai_home)

    fresh = enqueue_registration(remote_job(), settings=up)

    assert queued_job_ids(redis_url) == [fresh, *spooled]  # the new job first, then the outbox, oldest first
    assert list(down.outbox_dir.iterdir()) == []
    assert all(job_status(job_id, up)["state"] == "PENDING" for job_id in spooled)


def test_the_flush_after_an_enqueue_is_bounded(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    down = unreachable()
    spooled = [enqueue_registration(remote_job(), settings=down) for _ in range(4)]
    no_flush = Settings(redis_url=redis_url, hokusai_home=down.hokusai_home, hokusai_outbox_flush_s=0)
    first = enqueue_registration(remote_job(), settings=no_flush)
    assert queued_job_ids(redis_url) == [first]  # HOKUSAI_OUTBOX_FLUSH_S=0: the outbox is left alone

    monkeypatch.setattr(producer_outbox, "FLUSH_ON_ENQUEUE_MAX_JOBS", 3)
    up = Settings(redis_url=redis_url, hokusai_home=down.hokusai_home)
    second = enqueue_registration(remote_job(), settings=up)
    assert queued_job_ids(redis_url) == [first, second, *spooled[:3]]
    assert [entry.job_id for entry in spooled_entries(up.outbox_dir)] == spooled[3:]


def test_a_healthy_enqueue_creates_no_outbox(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    job_id = enqueue_registration(remote_job(), settings=settings)
    assert queued_job_ids(redis_url) == [job_id]
    assert not settings.outbox_dir.exists()  # the healthy path lists a missing folder, nothing more


def test_flush_skips_temp_files_and_removes_those_of_dead_writers(redis_url: str) -> None:
    down = unreachable()
    job_id = enqueue_registration(remote_job(), settings=down)
    folder = down.outbox_dir
    dead = folder / f".{job_id}.0badf00d.tmp"
    dead.write_text('{"format": 1, "job": {"kind": "basel')  # a writer killed mid-write
    fresh = folder / f".{job_id}.00c0ffee.tmp"
    fresh.write_text("{")
    old = time.time() - 60
    os.utime(dead, (old, old))
    up = Settings(redis_url=redis_url, hokusai_home=down.hokusai_home)

    report = flush_outbox(up)

    assert report.published == [job_id] and report.invalid == [] and report.remaining == 0
    assert report.removed_temp_files == 1
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name]  # too young: its writer may be alive
    assert queued_job_ids(redis_url) == [job_id]


def test_a_file_that_is_no_job_is_reported_never_published(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    settings.outbox_dir.mkdir(parents=True)
    job_id = "5f0c3a56-0d7e-4a55-9d4b-0a8f3c1f2e11"
    spooled_file(settings.outbox_dir, job_id).write_text('{"format": 1, "job": {"kind": "nonsense"}}')

    result = cli(outbox, ["flush"], {"REDIS_URL": redis_url})

    assert result.exit_code == ExitCode.NOT_OK, result.output
    report = json.loads(result.stdout)
    assert report["published"] == [] and report["remaining"] == 1
    assert "is not a spooled job" in report["invalid"][0]["error"]
    assert queued_job_ids(redis_url) == []
    listed = json.loads(cli(outbox, ["list"], {}).stdout)
    assert listed[0]["file"] == str(spooled_file(settings.outbox_dir, job_id)) and "error" in listed[0]


def test_outbox_commands_and_their_exit_codes(redis_url: str) -> None:
    down_url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    env = {"REDIS_URL": down_url, "ENQUEUE_RETRY_S": "0"}
    assert cli(outbox, ["list"], env).stdout.strip() == "[]"
    job_id = enqueue_registration(remote_job(), settings=Settings(redis_url=down_url, enqueue_retry_s=0))

    listed = cli(outbox, ["list"], env)
    assert listed.exit_code == ExitCode.OK
    (row,) = json.loads(listed.stdout)
    assert (row["job_id"], row["kind"], row["model_type"]) == (job_id, "baseline", "classification")
    shown = cli(outbox, ["show", job_id], env)
    assert shown.exit_code == ExitCode.OK
    assert json.loads(shown.stdout)["job"] == read_spooled(get_settings(), job_id).job
    assert cli(outbox, ["show", "not-a-uuid"], env).exit_code == ExitCode.USAGE
    missing = cli(outbox, ["show", "00000000-0000-4000-8000-000000000000"], env)
    assert missing.exit_code == ExitCode.NOT_OK and "no job 00000000-" in missing.stderr

    status = cli(main, ["jobs", "status", job_id], env)
    assert status.exit_code == ExitCode.OK, status.output
    assert json.loads(status.stdout)["state"] == "SPOOLED"

    down = cli(outbox, ["flush"], env)
    assert down.exit_code == ExitCode.UNAVAILABLE, down.output
    assert json.loads(down.stdout)["remaining"] == 1
    assert down.stderr.splitlines()[-1].startswith("Error: Redis at redis://127.0.0.1:")
    assert "hunter2" not in down.output

    up = cli(outbox, ["flush"], {"REDIS_URL": redis_url})
    assert up.exit_code == ExitCode.OK, up.output
    assert json.loads(up.stdout)["published"] == [job_id]
    assert queued_job_ids(redis_url) == [job_id]
    assert json.loads(cli(main, ["jobs", "status", job_id], {"REDIS_URL": redis_url}).stdout)["state"] == "PENDING"


def test_the_enqueue_command_spools_too_and_exits_0() -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0", "ENQUEUE_RETRY_S": "0"}
    args = ["enqueue", "--kind", "baseline", "--model-type", "ranking", "--artifact-uri", REMOTE_MODEL]
    done = cli(main, args, env)
    assert done.exit_code == ExitCode.OK, done.output
    assert spooled_file(get_settings().outbox_dir, done.stdout.strip()).is_file()
    off = cli(main, args, {**env, "HOKUSAI_OUTBOX": "false"})
    assert off.exit_code == ExitCode.UNAVAILABLE and "is unreachable while enqueueing job" in off.stderr
    assert len(list(get_settings().outbox_dir.iterdir())) == 1


def test_outbox_summary_counts_the_jobs_and_dates_the_oldest() -> None:
    settings = unreachable()
    assert outbox_summary(settings.outbox_dir) == (0, None)  # no folder: an empty outbox
    first = enqueue_registration(remote_job(), settings=settings)
    enqueue_registration(remote_job(), settings=settings)
    long_ago = datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp()
    os.utime(spooled_file(settings.outbox_dir, first), (long_ago, long_ago))

    depth, oldest_at = summary = outbox_summary(settings.outbox_dir)

    assert depth == 2 and oldest_at == datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    assert summary.oldest_age_s(datetime(2026, 11, 27, 9, 1, tzinfo=UTC)) == 60.0


# ---------------------------------------------------------------------------- staging
def test_a_spooled_jobs_staging_folder_survives_pruning_until_it_is_published(
    redis_url: str, sk_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGING_RETENTION_S", "0")  # an unknown job's folder would go at once
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    monkeypatch.setenv("ENQUEUE_RETRY_S", "0")
    get_settings.cache_clear()
    job_id = save_and_enqueue(sk_model, {"kind": "baseline", "model_type": "lead_scoring"})
    folder = get_settings().staging_dir / job_id
    assert (folder / "MLmodel").is_file() and job_status(job_id)["state"] == SPOOLED
    unspooled = get_settings().staging_dir / "2b1e0c4e-3d6f-4c1a-9a53-6f0d1e2c3b4a"
    shutil.copytree(folder, unspooled)  # the same folder, its job not in the outbox
    up = Settings(redis_url=redis_url, staging_retention_s=0)

    removed = prune_staging(up)

    assert removed == [unspooled] and folder.is_dir()  # Redis does not know either job: only the outbox saves it
    assert flush_outbox(up).published == [job_id]
    assert prune_staging(up) == [] and folder.is_dir()  # queued now: a worker still needs it


# ---------------------------------------------------------------------------- real processes
SPOOL_LOOP = """
import sys
from producers import enqueue_registration
fields = {"kind": "baseline", "model_type": "lead_scoring", "artifact_uri": "s3://models/m",
          "metadata": {"notes": "x" * 100_000}}
while True:
    print(enqueue_registration(fields), flush=True)
"""


def test_a_producer_killed_while_spooling_leaves_only_whole_jobs(redis_url: str, tmp_path: Path) -> None:
    home = tmp_path / "pipeline-home"
    env = producer_env(home, f"redis://127.0.0.1:{closed_port()}/0", ENQUEUE_RETRY_S="0", HOKUSAI_OUTBOX_FLUSH_S="0")
    returned: list[str] = []
    rng = random.Random(25)
    for _ in range(4):  # SIGKILL at random points: mid-write, mid-rename, between jobs
        producer = subprocess.Popen([sys.executable, "-c", SPOOL_LOOP], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        assert producer.stdout is not None
        first = producer.stdout.readline().strip()  # it spools: the loop is running
        time.sleep(rng.uniform(0.0, 0.4))
        producer.send_signal(signal.SIGKILL)
        rest, _ = producer.communicate(timeout=30)
        returned += [first, *rest.split()]
    settings = Settings(redis_url=redis_url, hokusai_home=home)
    folder = settings.outbox_dir

    jobs, invalid = list_spooled(settings)

    assert invalid == []  # only whole jobs: a killed write is a temp file or nothing
    assert set(returned) <= {job.job_id for job in jobs}  # every id a call returned is kept
    assert all(is_temp(p) or p.name.endswith(".json") for p in folder.iterdir())
    old = time.time() - 60
    for temp in [p for p in folder.iterdir() if is_temp(p)]:
        os.utime(temp, (old, old))
    report = flush_outbox(settings)
    assert sorted(report.published) == sorted(job.job_id for job in jobs) and report.invalid == []
    assert list(folder.iterdir()) == []  # the dead writers' temp files are gone too
    assert sorted(queued_job_ids(redis_url)) == sorted(report.published)


def test_two_flushers_at_once_publish_each_job_once(redis_url: str, tmp_path: Path) -> None:
    home = tmp_path / "shared-home"
    down = unreachable(hokusai_home=home)
    spooled = [enqueue_registration(remote_job(), settings=down) for _ in range(400)]
    env = producer_env(home, redis_url)

    flushers = [outbox_command("flush", env=env) for _ in range(2)]
    outputs = [flusher.communicate(timeout=120) for flusher in flushers]

    assert [flusher.returncode for flusher in flushers] == [0, 0], outputs
    reports = [json.loads(stdout) for stdout, _ in outputs]
    first, second = (set(report["published"]) for report in reports)
    assert first and second, "the two flushers did not overlap"
    assert first.isdisjoint(second) and first | second == set(spooled)
    assert sorted(queued_job_ids(redis_url)) == sorted(spooled)  # each job published exactly once
    assert list(Settings(hokusai_home=home).outbox_dir.iterdir()) == []


def test_a_flusher_killed_mid_flush_leaves_each_job_spooled_or_published(redis_url: str, tmp_path: Path) -> None:
    home = tmp_path / "shared-home"
    down = unreachable(hokusai_home=home)
    spooled = [enqueue_registration(remote_job(), settings=down) for _ in range(300)]
    flusher = outbox_command("flush", env=producer_env(home, redis_url))
    wait_until(lambda: len(queued_job_ids(redis_url)) >= 20, timeout_s=60, what="the flusher to publish some")
    flusher.send_signal(signal.SIGKILL)
    flusher.communicate(timeout=30)
    settings = Settings(redis_url=redis_url, hokusai_home=home)

    published = set(queued_job_ids(redis_url))
    still = {job.job_id for job in list_spooled(settings)[0]}
    assert published | still == set(spooled) and len(published) < len(spooled)  # nothing lost, none half
    assert len(still & published) <= 1  # at most the job it was between publishing and removing

    assert set(flush_outbox(settings).published) == still
    assert sorted(set(queued_job_ids(redis_url))) == sorted(spooled)


EXIT_PRODUCER = """
import sys
from producers import enqueue_registration
print(enqueue_registration({"kind": "baseline", "model_type": "lead_scoring", "artifact_uri": "s3://models/m"}),
      flush=True)
sys.stdin.readline()  # the pipeline goes on; Redis comes back meanwhile
"""


def test_a_process_that_spooled_flushes_once_more_at_exit(tmp_path: Path) -> None:
    server = OwnRedis(tmp_path / "own-redis", persistent=False)  # not started yet: Redis is down
    home = tmp_path / "pipeline-home"
    env = producer_env(home, server.url, ENQUEUE_RETRY_S="0.2")
    producer = subprocess.Popen([sys.executable, "-c", EXIT_PRODUCER], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert producer.stdout is not None and producer.stdin is not None
    job_id = producer.stdout.readline().strip()
    outbox_dir = Settings(hokusai_home=home).outbox_dir
    assert spooled_file(outbox_dir, job_id).is_file()
    server.start()
    try:
        _, stderr = producer.communicate("\n", timeout=60)
        assert producer.returncode == 0, stderr
        assert "published 1 spooled job(s) at exit" in stderr
        assert queued_job_ids(server.url) == [job_id]
        assert list(outbox_dir.iterdir()) == []
    finally:
        server.stop()


PIPELINE = """
import json, sys
from producers import enqueue_registration
for fields in json.loads(sys.argv[1]):
    print(enqueue_registration(fields), flush=True)
"""


@pytest.mark.slow
def test_every_spooled_job_is_registered_exactly_once_after_redis_returns(
    tracking_uri: str, own_redis: OwnRedis, staging: Path, sk_model: Any, tmp_path: Path
) -> None:
    model_dir = save_model_dir(sk_model, staging)
    home = Path(os.environ["HOKUSAI_HOME"])  # producers and the worker share it (staging, outbox)
    env = producer_env(home, own_redis.url, ENQUEUE_RETRY_S="0.5")
    up = Settings(redis_url=own_redis.url, hokusai_home=home)
    # A job published, and still spooled: a flusher killed between publishing it and removing its file.
    twice = enqueue_registration(job_fields(model_dir), settings=up)
    producer_outbox.spool_job(read_payload(own_redis.url, twice), up, cause=BrokerUnavailableError("killed flusher"))

    own_redis.stop()
    pipeline = subprocess.run([sys.executable, "-c", PIPELINE, json.dumps([job_fields(model_dir)] * 3)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert pipeline.returncode == 0, pipeline.stderr
    spooled = pipeline.stdout.split()
    assert len(spooled) == 3 and "spooled to the outbox" in pipeline.stderr
    assert {entry.job_id for entry in spooled_entries(up.outbox_dir)} == {twice, *spooled}
    assert all(job_status(job_id, up)["state"] == SPOOLED for job_id in spooled)  # Redis is down: not asked

    own_redis.start()  # its AOF kept what was queued before
    worker_env = {"MLFLOW_TRACKING_URI": tracking_uri, "REDIS_URL": own_redis.url, "HOKUSAI_HOME": str(home)}
    with WorkerProcess(worker_env, tmp_path / "worker") as worker:
        # the next enqueue of a pipeline that shares the outbox sends the spooled jobs too
        after = subprocess.run([sys.executable, "-c", PIPELINE, json.dumps([job_fields(model_dir)])], env=env,
                               capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert after.returncode == 0, after.stderr
        last = after.stdout.strip()
        assert list(up.outbox_dir.iterdir()) == []
        everything = [twice, *spooled, last]
        app = client_app(own_redis.url)
        wait_until(
            lambda: (
                all(app.AsyncResult(job_id).state == "SUCCESS" for job_id in everything)
                and worker.log_text().count(f"[{twice}] succeeded") >= 2
            ),
            timeout_s=180,
            what=f"every job registered, {twice} delivered twice:\n{worker.log_tail()}",
        )
    client = MlflowClient(tracking_uri)
    assert {job_id: len(versions_of_job(client, job_id)) for job_id in everything} == dict.fromkeys(everything, 1)


def read_payload(redis_url: str, job_id: str) -> dict[str, Any]:
    """The job a queued registration message carries (its first argument)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for item in client.lrange(REGISTRATION_QUEUE, 0, -1):
            message = json.loads(item)
            if message["headers"]["id"] == job_id:
                args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
                return dict(args[0])
    finally:
        client.close()
    raise AssertionError(f"job {job_id} is not queued")
