"""An S3-compatible object store for tests: moto's standalone server, a stand-in for S3 itself.

Moto's server speaks the S3 protocol over HTTP, as MLflow's own test suite uses it. Clients reach it
through ``MLFLOW_S3_ENDPOINT_URL`` (MLflow's S3 artifact repository) with any key pair; what this
module yields is the environment every client of the store needs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.devstack import StackError, free_port, log_tail, port_open, stop_process_group, wait_until

#: The bucket the tests' artifact roots live in.
BUCKET = "hokusai-artifacts"


def s3_env(endpoint_url: str) -> dict[str, str]:
    """What a process needs to read and write the store (moto accepts any credentials)."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "hokusai-test",
        "AWS_SECRET_ACCESS_KEY": "hokusai-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextmanager
def moto_server(work_dir: Path, *, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> Iterator[str]:
    """Run ``python -m moto.server`` on ``host`` (``prefix``: e.g. ``ip netns exec NS``); yield its URL."""
    port = free_port() if host == "127.0.0.1" else 9000
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"moto-{port}.log"
    command = [*prefix, sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=work_dir)  # fmt: skip
    try:
        if not prefix:

            def up() -> bool:
                if process.poll() is not None:
                    raise StackError(f"moto server exited with {process.returncode}:\n{log_tail(log_path)}")
                return port_open(host, port)

            wait_until(up, timeout_s=60, what="the moto server")
        yield f"http://{host}:{port}"
    finally:
        stop_process_group(process, timeout_s=10)


def _client(endpoint_url: str) -> Any:
    import boto3  # type: ignore[import-untyped]

    env = s3_env(endpoint_url)
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def create_bucket(endpoint_url: str, name: str = BUCKET) -> None:
    """Create ``name`` in the store at ``endpoint_url``."""
    _client(endpoint_url).create_bucket(Bucket=name)


def upload_folder(endpoint_url: str, folder: Path, prefix: str, name: str = BUCKET) -> str:
    """Upload every file of ``folder`` under ``prefix``; return its ``s3://`` URI (as a pipeline would)."""
    client = _client(endpoint_url)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), name, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{name}/{prefix}"


def object_keys(endpoint_url: str, prefix: str, name: str = BUCKET) -> list[str]:
    """Every key under ``prefix`` in the bucket."""
    keys: list[str] = []
    for page in _client(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys
