"""The per-job attempt marker: a first delivery skips the idempotency look-ups, a later one searches.

Real Redis (the test database) and a real MLflow sqlite store; the crash and redelivery cases
with real worker processes are in tests/test_queue.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hokusai_registry.contract import RegistrationJob
from hokusai_registry.settings import get_settings
from tests.queue_helpers import job_fields, save_model_dir, versions_of_job
from worker.registration import attempts
from worker.registration.job import register_job


def test_begin_attempt_is_true_once_and_expires(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    assert attempts.begin_attempt(client, "job-a", ttl_s=600) is True
    assert attempts.begin_attempt(client, "job-a", ttl_s=600) is False
    assert attempts.begin_attempt(client, "job-b", ttl_s=600) is True
    assert 0 < client.ttl(attempts.marker_key("job-a")) <= 600  # never grows without bound


def test_first_delivery_skips_lookups_and_a_second_one_replays(
    redis_url: str, registry: Any, tracking_uri: str, staging: Path, sk_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    job = RegistrationJob.model_validate(job_fields(save_model_dir(sk_model, staging)))
    searches: list[str] = []
    find_version, search_logged = registry.find_version_by_tag, mlflow.search_logged_models

    def counting_find(*args: Any, **kwargs: Any) -> Any:
        searches.append("version")
        return find_version(*args, **kwargs)

    def counting_search(*args: Any, **kwargs: Any) -> Any:
        searches.append("logged_model")
        return search_logged(*args, **kwargs)

    monkeypatch.setattr(registry, "find_version_by_tag", counting_find)
    monkeypatch.setattr(mlflow, "search_logged_models", counting_search)

    first = register_job(job, registry, get_settings(), redis_client=client)
    assert searches == [], "a first delivery must not search for an earlier attempt's work"
    assert first["replayed"] is False
    assert client.exists(attempts.marker_key(str(job.job_id)))

    second = register_job(job, registry, get_settings(), redis_client=client)
    assert searches == ["version"], "a redelivery must search (and find the version)"
    assert second["replayed"] is True and second["version"] == first["version"]
    assert len(versions_of_job(MlflowClient(tracking_uri), str(job.job_id))) == 1


def test_marker_is_set_before_mlflow_is_called(
    redis_url: str, registry: Any, staging: Path, sk_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash inside the first attempt leaves the marker behind, so the redelivery searches."""
    import redis

    client = redis.Redis.from_url(redis_url)
    job = RegistrationJob.model_validate(job_fields(save_model_dir(sk_model, staging)))

    class Crash(BaseException):
        pass

    def crash(*_: Any, **__: Any) -> None:
        raise Crash("died while logging")

    monkeypatch.setattr(mlflow.models.Model, "log", crash)
    with pytest.raises(Crash):
        register_job(job, registry, get_settings(), redis_client=client)
    assert attempts.begin_attempt(client, str(job.job_id), ttl_s=60) is False
