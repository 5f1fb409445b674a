"""Shared core of hokusai-registry: the job contract, settings, errors, stores and the CLI.

``contract``, ``settings`` and ``errors`` import only pydantic and the standard library, and the
producer side needs nothing heavier (no mlflow, no worker); the CLI imports the worker's modules
only inside the commands that need them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hokusai-registry")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
