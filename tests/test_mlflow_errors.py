"""worker.registration.mlflow_errors and worker.retry_policy: retryable or not, judged by the whole cause chain."""

from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException

from hokusai_registry.causes import cause_chain
from hokusai_registry.errors import InvalidJobError, RegistryUnavailableError
from worker.registration.mlflow_errors import mlflow_boundary
from worker.retry_policy import is_retryable


def wrapped_connection_loss() -> MlflowException:
    """What register_model raises when the server dies while it reads the new version's LoggedModel."""
    try:
        try:
            raise requests.exceptions.ConnectionError("HTTPConnectionPool: Connection refused")
        except requests.exceptions.ConnectionError as exc:
            raise MlflowException("Failed to get logged model m-123", error_code="INVALID_PARAMETER_VALUE") from exc
    except MlflowException as outer:
        return outer


def test_a_connection_error_deep_in_the_chain_is_retryable() -> None:
    exc = wrapped_connection_loss()
    assert len(cause_chain(exc)) == 2
    assert is_retryable(exc)
    with (
        pytest.raises(RegistryUnavailableError, match="Failed to get logged model") as caught,
        mlflow_boundary("registering m"),
    ):
        raise exc
    assert caught.value.__cause__ is exc


def test_a_real_invalid_parameter_stays_permanent() -> None:
    exc = MlflowException("Registered model name is invalid", error_code="INVALID_PARAMETER_VALUE")
    assert not is_retryable(exc)
    with pytest.raises(MlflowException), mlflow_boundary("registering m"):
        raise exc


def test_a_permanent_error_on_top_is_never_retried_whatever_its_cause() -> None:
    try:
        raise InvalidJobError("bad job") from ConnectionError("refused")
    except InvalidJobError as exc:
        assert not is_retryable(exc)


def test_unknown_errors_are_permanent_unless_a_cause_is_transient() -> None:
    assert not is_retryable(KeyError("model_name"))
    try:
        raise RuntimeError("wrapper") from TimeoutError("read timed out")
    except RuntimeError as exc:
        assert is_retryable(exc)


def test_a_cycle_in_the_chain_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert cause_chain(first) == [first, second]
