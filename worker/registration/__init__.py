"""Registration: one job's model logged once and registered once in MLflow, found again by uuid.

``registry`` (``HokusaiModelRegistry``) is the in-process API; ``job`` runs one queued job
idempotently on top of it; ``artifacts``, ``signatures``, ``lineage``, ``model_inputs`` and
``mlflow_errors`` are what both use.
"""
