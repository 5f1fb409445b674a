"""The production code path before this project: a PythonModel wrapper logged with default requirement inference.

Pickled by value, so MLflow's requirement-inference subprocess can load it without ``bench`` on its path
(otherwise the inference would fail and fall back to defaults, and the timing would be wrong).
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import mlflow.pyfunc

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SklearnWrapper(mlflow.pyfunc.PythonModel):
    """What the old code logged: the estimator inside a PythonModel."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return self.model.predict(model_input)


def log_and_register_twice(model: Any, experiment_id: str, name: str) -> Any:
    """``pyfunc.log_model(registered_model_name=...)`` with default inference, then ``register_model`` again.

    Returns the second ModelVersion (production today ends up with two versions per registration).
    """
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=SklearnWrapper(model), registered_model_name=name)
    return mlflow.register_model(info.model_uri, name)
