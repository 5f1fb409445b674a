"""Secrets from files: every setting may come from ``<NAME>_FILE``; a Redis password joins REDIS_URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from hokusai_registry.settings import Settings


def test_any_setting_reads_from_its_file_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("whsec_from-a-file\n", encoding="utf-8")
    (tmp_path / "attempts").write_text("4", encoding="utf-8")
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("WEBHOOK_MAX_ATTEMPTS_FILE", str(tmp_path / "attempts"))
    settings = Settings()
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == "whsec_from-a-file", "one trailing newline is dropped"
    assert settings.webhook_max_attempts == 4


def test_both_the_variable_and_its_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("a", encoding="utf-8")
    monkeypatch.setenv("WEBHOOK_SECRET", "b")
    monkeypatch.setenv("WEBHOOK_SECRET_FILE", str(tmp_path / "secret"))
    with pytest.raises(ValueError, match="both WEBHOOK_SECRET and WEBHOOK_SECRET_FILE"):
        Settings()


def test_an_unreadable_file_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="REDIS_PASSWORD_FILE: cannot read"):
        Settings()


def test_redis_password_joins_the_url_unless_it_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6380/2")
    monkeypatch.setenv("REDIS_PASSWORD", "p@ss:word/1")
    url = Settings().redis_url
    assert url == "redis://:p%40ss%3Aword%2F1@redis.internal:6380/2"
    kwargs = redis.Redis.from_url(url).connection_pool.connection_kwargs
    assert kwargs["password"] == "p@ss:word/1" and kwargs["host"] == "redis.internal" and kwargs["db"] == 2
    monkeypatch.setenv("REDIS_URL", "redis://:own@redis.internal:6380/2")
    assert Settings().redis_url == "redis://:own@redis.internal:6380/2", "a password in REDIS_URL is kept"


def test_tracking_server_uri_takes_the_database_password_from_its_file(tmp_path: Path) -> None:
    from hokusai_app.tracking_server import backend_store_uri
    from hokusai_registry.errors import ConfigurationError

    (tmp_path / "pg").write_text("s3cr@t/pw\n", encoding="utf-8")
    uri = backend_store_uri({"POSTGRES_PASSWORD_FILE": str(tmp_path / "pg"), "POSTGRES_DB": "tracking"})
    assert uri == "postgresql+psycopg2://mlflow:s3cr%40t%2Fpw@postgres:5432/tracking"
    with pytest.raises(ConfigurationError, match="both POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE"):
        backend_store_uri({"POSTGRES_PASSWORD_FILE": str(tmp_path / "pg"), "POSTGRES_PASSWORD": "x"})
