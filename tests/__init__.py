"""Tests; a package so that helpers (``tests.mlflow_server``, ``tests.conftest``) can be imported."""
