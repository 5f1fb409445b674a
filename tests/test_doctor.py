"""`hokusai-registry doctor` is read-only and answers in seconds, run as users run it (the console script)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import redis
import sqlalchemy

from devtools import devstack
from tests.mlflow_server import ADMIN_DSN
from tests.support import POSTGRES_HOST, POSTGRES_PORT, free_port, require_service
from tests.test_store_setup import revision_of, stamp_older_revision

DOCTOR = Path(sys.executable).with_name("hokusai-registry")  # the console script pip installed


def run_doctor(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DOCTOR), "doctor", *args], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def checks_of(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in json.loads(done.stdout)}


def everything_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_doctor_on_a_fresh_home_creates_no_store_folder_or_redis_key(redis_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"  # HOKUSAI_HOME (conftest), not created yet
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = everything_under(tmp_path)
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0

    done = run_doctor({}, cwd, "--json")

    mlflow = checks_of(done)["mlflow"]
    assert mlflow["status"] == "ok" and "not created yet; the first worker creates it" in mlflow["detail"], mlflow
    assert everything_under(tmp_path) == before, "doctor created files or folders"
    assert not home.exists()
    assert client.keys("*") == [], "doctor wrote into Redis"
    assert "Creating initial MLflow database tables" not in done.stdout + done.stderr


def test_doctor_with_redis_on_a_closed_port_answers_within_seconds(tmp_path: Path) -> None:
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # refused at once: only doctor's own cost remains

    started = time.monotonic()
    done = run_doctor(env, tmp_path, "--json")
    elapsed_s = time.monotonic() - started

    assert elapsed_s < 5, f"doctor took {elapsed_s:.1f}s with Redis down"
    checks = checks_of(done)
    assert checks["redis"]["status"] == "fail", checks["redis"]
    skipped = "not checked: Redis does not answer (see the redis check)"
    assert checks["workers"]["detail"] == checks["backlog"]["detail"] == skipped


def test_doctor_reports_a_store_that_needs_migrating_with_the_fix_and_leaves_it_as_it_was(
    tracking_uri: str, redis_url: str, tmp_path: Path
) -> None:
    older = stamp_older_revision(tracking_uri)

    done = run_doctor({}, tmp_path, "--json")

    mlflow = checks_of(done)["mlflow"]
    assert mlflow["status"] == "fail" and f"schema at revision {older}, out of date" in mlflow["detail"], mlflow
    assert f"`mlflow db upgrade {tracking_uri}`" in str(mlflow["fix"]), mlflow
    assert revision_of(tracking_uri) == older


def test_doctor_reports_a_half_migrated_store_naming_the_tables_to_drop(
    tracking_uri: str, redis_url: str, tmp_path: Path
) -> None:
    older = stamp_older_revision(tracking_uri)
    with closing(sqlite3.connect(tracking_uri.removeprefix("sqlite:///"))) as connection, connection:
        connection.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")  # a cut-off batch step

    done = run_doctor({}, tmp_path)

    assert done.returncode != 0, done.stdout
    assert f"fail  mlflow: {tracking_uri} is not usable: half-migrated: schema at revision {older}" in done.stdout
    assert f"drop the tables _alembic_tmp_experiments, run `mlflow db upgrade {tracking_uri}`" in done.stdout
    assert revision_of(tracking_uri) == older


def test_doctor_does_not_create_the_tables_of_an_empty_tracking_database(redis_url: str, tmp_path: Path) -> None:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    with devstack.postgres_database(ADMIN_DSN) as database_uri:
        env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "TRACKING_DATABASE_URI": database_uri}
        done = run_doctor(env, tmp_path, "--json")
        engine = sqlalchemy.create_engine(database_uri)
        try:
            tables = sqlalchemy.inspect(engine).get_table_names()
        finally:
            engine.dispose()

    database = checks_of(done)["tracking database"]
    assert database["status"] == "fail" and "the tracking server creates them" in database["detail"], database
    assert tables == [], "doctor created MLflow's tables in the tracking server's database"


def test_doctor_reports_the_outbox_depth_and_its_oldest_job_and_how_to_send_them(tmp_path: Path) -> None:
    from devtools.builders import baseline_fields
    from hokusai_registry.settings import Settings
    from producers import enqueue_registration

    closed = f"redis://127.0.0.1:{free_port()}/0"  # Redis away: the producer spools
    home = Path(os.environ["HOKUSAI_HOME"])
    assert checks_of(run_doctor({"REDIS_URL": closed}, tmp_path, "--json"))["outbox"]["status"] == "ok"
    away = Settings(redis_url=closed, enqueue_retry_s=0)
    spooled = [enqueue_registration(baseline_fields("s3://models/lead-scoring/1"), settings=away) for _ in range(2)]

    outbox = checks_of(run_doctor({"REDIS_URL": closed}, tmp_path, "--json"))["outbox"]
    assert outbox["status"] == "warn" and outbox["detail"].startswith(f"2 job(s) spooled in {home / 'outbox'}"), outbox
    assert "hokusai-registry outbox flush" in outbox["fix"], outbox
    assert sorted(p.stem for p in (home / "outbox").glob("*.json")) == sorted(spooled)
