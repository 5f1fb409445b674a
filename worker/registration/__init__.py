"""Registration: one job's model logged once and registered once in MLflow, found again by uuid.

``registry`` (``HokusaiModelRegistry``) is the in-process API and holds the write path; ``job``
runs one queued job idempotently on top of it. Reading is in modules of its own, plain functions
over ``reads.RegistryStore``: ``lookups``, ``listing``, ``promotion``, ``compat`` (the pre-upgrade
shapes) and ``backfill``; ``tags`` names everything written into MLflow. ``model_log``,
``results``, ``artifacts``, ``signatures``, ``lineage``, ``model_inputs`` and ``mlflow_errors`` are
what these use.
"""
