"""How a worker process runs MLflow: set before MLflow is first imported (``worker.celery_app`` does).

Every value is a default: an operator's own environment variable wins.
"""

from __future__ import annotations

import importlib.util
import os
import sys

#: Environment defaults of a worker process, and why.
ENVIRONMENT = {
    # One retry layer per call: Celery owns the long backoff between attempts, so MLflow's own
    # HTTP client fails fast instead of retrying for minutes inside one attempt.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    # A worker does not phone home: MLflow's usage telemetry (a thread posting to mlflow.org from
    # every process) is off unless MLFLOW_DISABLE_TELEMETRY=false. Read when mlflow is imported.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # No "View run at ..." line per job: each costs a runs/get request on every end_run.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

#: Optional packages MLflow looks for on every run (Databricks and notebook detection). Python
#: does not remember a failed import, so each look searches sys.path again: ~43 searches and
#: ~4 ms a registration (bench/README.md). One that is not installed is remembered as absent.
PROBED_OPTIONAL_MODULES = ("pyspark", "dbruntime", "IPython")


def apply() -> None:
    """Set the environment defaults and remember which probed packages are not installed."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in PROBED_OPTIONAL_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            # `import name` now raises ModuleNotFoundError at once; find_spec(name) returns None.
            sys.modules[name] = None  # type: ignore[assignment]
