"""A misconfigured worker, Flower or CLI refuses to start with one clear line: no traceback, no secret."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from devtools import builders
from hokusai_app.cli import main
from tests.worker_process import ROOT, wait_until

SECRET_BYTES = b"QQQ-this-must-never-be-printed-QQQ"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()


def start(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", *command],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_one_clean_line(done: subprocess.CompletedProcess[str], *names: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output and "input_value" not in output, output
    for secret_part in (SECRET, SECRET[10:30], base64.b64encode(SECRET_BYTES).decode()[:16], "QQQ"):
        assert secret_part not in output, output
    [line] = [line for line in done.stderr.splitlines() if "cannot start" in line]
    for name in names:
        assert name in line, line
    return line


BAD_TIMING = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_URL": "https://hooks.example/in?token=QQQ",
    "VISIBILITY_TIMEOUT_S": "1",
}


@pytest.mark.parametrize("command", [["worker", "--pool", "solo"], ["flower", "--port=0"]], ids=["worker", "flower"])
def test_invalid_settings_stop_worker_and_flower_with_one_line(redis_url: str, command: list[str]) -> None:
    line = assert_one_clean_line(start(command, {"REDIS_URL": redis_url, **BAD_TIMING}), "VISIBILITY_TIMEOUT_S")
    assert "fix" in line


def test_a_plain_text_secret_is_refused_by_the_worker_naming_the_fix(redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        "REDIS_URL": redis_url,
        "WEBHOOK_URL": "https://hooks.example/in",
        "WEBHOOK_SECRET": "QQQ-plain-text-secret",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
    }
    line = assert_one_clean_line(start(["worker", "--pool", "solo"], env), "WEBHOOK_SECRET", "new-secret")
    assert "WEBHOOK_ALLOW_PLAINTEXT_SECRET" in line


def test_the_cli_refuses_invalid_settings_without_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BAD_TIMING.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["jobs", "failed"])
    assert result.exit_code == 2
    assert "VISIBILITY_TIMEOUT_S" in result.stderr and "QQQ" not in result.output and "Traceback" not in result.output


def test_new_secret_prints_a_fresh_standard_webhooks_secret() -> None:
    first = CliRunner().invoke(main, ["webhooks", "new-secret"]).stdout.strip()
    second = CliRunner().invoke(main, ["webhooks", "new-secret"]).stdout.strip()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32


def test_check_webhook_config_refuses_plain_text_unless_allowed() -> None:
    from hokusai_registry.errors import ConfigurationError
    from hokusai_registry.settings import Settings
    from worker.webhooks.delivery import check_webhook_config

    fields: dict[str, Any] = {"webhook_url": "https://hooks.example/in", "webhook_secret": "plain-text"}
    with pytest.raises(ConfigurationError, match="WEBHOOK_ALLOW_PLAINTEXT_SECRET"):
        check_webhook_config(Settings(**fields))
    check_webhook_config(Settings(**fields, webhook_allow_plaintext_secret=True))
    check_webhook_config(Settings(webhook_url="https://hooks.example/in", webhook_secret=SECRET))


def test_httpx_request_log_shows_no_query_or_credentials(capfd: pytest.CaptureFixture[str]) -> None:
    from devtools.receiver import WebhookReceiver
    from hokusai_registry import log
    from hokusai_registry.settings import Settings

    with WebhookReceiver(SECRET) as receiver:
        hostport = receiver.url.split("//")[1].split("/")[0]
        url = receiver.url.replace("http://", "http://user:QQQpw@") + "?token=QQQtoken"
        log.configure_logging(Settings(log_level="INFO"))
        try:
            httpx.post(url, content=b"{}")
        finally:
            logging.getLogger().handlers.clear()
    err = capfd.readouterr().err
    assert f"HTTP Request: POST http://{hostport}/webhooks/model-registered" in err
    assert "QQQ" not in err and "token=" not in err


def test_the_docs_verification_snippet_verifies_a_real_delivery_with_headers_in_any_case() -> None:
    import re

    from devtools.receiver import WebhookReceiver
    from hokusai_registry.settings import Settings
    from worker.webhooks.delivery import deliver

    text = (ROOT / "docs" / "webhooks.md").read_text(encoding="utf-8")
    [snippet] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)
    event = builders.event("1", model_type="ranking", token_id="t")
    with WebhookReceiver(SECRET) as receiver:
        settings = Settings(webhook_url=receiver.url, webhook_secret=SECRET, webhook_allow_http=True)
        deliver(event, url=receiver.url, secret=SECRET, client=None, settings=settings)
        [received] = receiver.requests
    for case in (str.lower, str.upper, str.title):
        headers = {case(name): value for name, value in received.headers.items()}
        assert namespace["verify"](received.body, headers, SECRET)["model"]["version"] == "1"
    tampered = dict(received.headers)
    with pytest.raises(Exception):  # noqa: B017 - either signature check may be the one that refuses
        namespace["verify"](received.body + b" ", tampered, SECRET)


def test_the_webhook_rules_are_written_once() -> None:
    """Settings, the worker's start-up check, doctor, the CLI and delivery share one module's functions."""
    from hokusai_app import doctor
    from hokusai_registry import webhook_policy
    from worker.webhooks import delivery, signing

    assert delivery.check_webhook_config is webhook_policy.check_webhook_config
    assert delivery.check_webhook_url is webhook_policy.check_webhook_url
    assert signing.standard_webhooks_key is webhook_policy.standard_webhooks_key
    for path in ("worker/celery_app.py", "hokusai_app/doctor.py", "hokusai_app/cli.py"):
        assert "webhook_policy import check_webhook_config" in (ROOT / path).read_text(encoding="utf-8"), path
    assert doctor.check_webhooks.__module__ == "hokusai_app.doctor"


def test_worker_loglevel_debug_is_honoured(worker_env: dict[str, str], tmp_path: Path) -> None:
    from tests.worker_process import WorkerProcess

    with WorkerProcess({**worker_env, "LOG_LEVEL": "INFO"}, tmp_path, loglevel="DEBUG") as worker:
        wait_until(lambda: " DEBUG " in worker.log_text(), timeout_s=20, what="a DEBUG line in the worker log")
    with WorkerProcess({**worker_env, "LOG_LEVEL": "INFO"}, tmp_path / "info", loglevel="INFO") as quiet:
        text = quiet.log_text()
    assert " INFO " in text and " DEBUG " not in text
