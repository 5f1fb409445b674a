"""Which MLflow flavor saves or logs a model object: the one rule for producers and the registry.

mlflow (and scikit-learn) are imported only when a function here is called, so importing this
module stays cheap for the producer side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hokusai_registry.errors import InvalidInputError


@dataclass(frozen=True)
class Flavor:
    """An MLflow flavor module, the keyword its ``save_model``/``log_model`` take the model by,
    and its default pip requirements (always passed explicitly: no inference subprocess)."""

    module: Any
    model_keyword: str
    default_requirements: Callable[[], list[str]]


def is_sklearn_estimator(model: Any) -> bool:
    """True for a scikit-learn estimator (by module, or by ``BaseEstimator`` when sklearn is installed)."""
    if type(model).__module__.split(".")[0] == "sklearn":
        return True
    try:
        from sklearn.base import BaseEstimator
    except ImportError:
        return False
    return isinstance(model, BaseEstimator)


def flavor_for(model: Any) -> Flavor:
    """The flavor for a model object: ``mlflow.pyfunc`` for a ``PythonModel``, ``mlflow.sklearn`` for an estimator.

    Raises:
        InvalidInputError: any other kind of object.
    """
    import mlflow.pyfunc

    if isinstance(model, mlflow.pyfunc.PythonModel):
        from mlflow.pyfunc.model import get_default_pip_requirements

        return Flavor(mlflow.pyfunc, "python_model", get_default_pip_requirements)
    if is_sklearn_estimator(model):
        import mlflow.sklearn

        return Flavor(mlflow.sklearn, "sk_model", mlflow.sklearn.get_default_pip_requirements)
    raise InvalidInputError(
        f"model must be an mlflow.pyfunc.PythonModel or a scikit-learn estimator, not {type(model).__name__}"
    )
