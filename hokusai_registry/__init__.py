"""Shared core of hokusai-registry: the job contract, settings, errors and the CLI.

Imports only pydantic and the standard library, so producers can depend on it without
pulling in mlflow or the worker.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hokusai-registry")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
