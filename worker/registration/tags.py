"""The names the registry writes into MLflow and reads back: tags, run params, the alias, registered names.

Every tag and param name is written here once; registration, lookups, promotion, the compatibility
shapes and the backfill all use these. The registered-name rule (``hokusai_<model_type>_baseline``,
``<stem>_improved``) is the contract's (``hokusai_registry.contract``, which producers share), and is
re-exported here so the worker reads every name from one module.
"""

from __future__ import annotations

from hokusai_registry.contract import baseline_model_name, model_type_of_name

__all__ = ["baseline_model_name", "model_type_of_name"]

# --- model-version tags --------------------------------------------------------------
TAG_MODEL_UUID = "model_uuid"
TAG_MODEL_TYPE = "model_type"
TAG_IS_BASELINE = "is_baseline"
#: The contributor's address, lower-cased: lookups match an address in any letter case.
TAG_CONTRIBUTOR = "contributor"
TAG_BASELINE_ID = "baseline_model_id"
#: On the version and on the LoggedModel: the queued job that made it (the idempotency key).
TAG_JOB_ID = "job_id"
#: Kept in step with the ``production`` alias (MLflow 3 has no stages).
TAG_LIFECYCLE_STAGE = "lifecycle_stage"

#: ``is_baseline`` tag values.
TRUE, FALSE = "true", "false"

# --- run tags ---------------------------------------------------------------------------
#: The job's W3C trace context (the pipeline's span, ``RegistrationJob.trace_context``), on the run.
RUN_TAG_TRACEPARENT = "traceparent"

# --- the webhook's record (worker.webhooks.mlflow_record) -------------------------------
#: ``webhook_delivered.<endpoint>`` = the UTC ISO-8601 time the version's event was delivered there.
TAG_WEBHOOK_DELIVERED_PREFIX = "webhook_delivered."
#: The job's webhook fields that MLflow keeps nowhere else (token_id, user id, benchmark, ...), as JSON,
#: written at registration so ``webhooks reconcile`` can rebuild the event.
TAG_WEBHOOK_JOB = "webhook_job"

# --- promotion -----------------------------------------------------------------------
PRODUCTION_ALIAS = "production"
#: MLflow's retired stage names: what the pre-upgrade class and its API routes compare against, and
#: the values of ``lifecycle_stage``.
PRODUCTION_STAGE = "Production"
ARCHIVED_STAGE = "Archived"
#: ``lifecycle_stage`` values an earlier release of this registry wrote; read as the stages above,
#: and rewritten by the backfill.
LEGACY_LIFECYCLE_VALUES = {"production": PRODUCTION_STAGE, "archived": ARCHIVED_STAGE}

# --- the run params the pre-upgrade class logged (mlflow.search_runs finds runs by them) ---------
PARAM_MODEL_TYPE = "model_type"
PARAM_IS_BASELINE = "is_baseline"
PARAM_REGISTRATION_TIME = "registration_time"
PARAM_BASELINE_ID = "baseline_model_id"
#: The address exactly as the caller gave it (EIP-55 mixed case included), as the old class logged it.
PARAM_CONTRIBUTOR = "contributor_address"
PARAM_IMPROVEMENT_COUNT = "improvement_count"
#: ``metadata_<key>`` for each short scalar metadata value.
PARAM_METADATA_PREFIX = "metadata_"
#: ``is_baseline`` param values (Python's ``str(bool)``, as the old class logged them).
PARAM_TRUE, PARAM_FALSE = "True", "False"

# --- git lineage ---------------------------------------------------------------------
#: MLflow's own source tags (shown in its UI) on the run, by lineage key.
RUN_GIT_TAGS = {
    "commit": "mlflow.source.git.commit",
    "branch": "mlflow.source.git.branch",
    "repo": "mlflow.source.git.repoURL",
}
#: Short tags on the model version, by lineage key.
VERSION_GIT_TAGS = {"commit": "git_commit", "branch": "git_branch", "repo": "git_repo"}

#: The artifact name of every logged model.
MODEL_ARTIFACT_NAME = "model"


def lifecycle_stage(value: str | None) -> str | None:
    """A ``lifecycle_stage`` tag's value as the stage it names (``production`` and ``Production`` alike)."""
    if value is None:
        return None
    return LEGACY_LIFECYCLE_VALUES.get(value, value)
