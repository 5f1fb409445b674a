"""What every benchmark registers: the small model, its signature and example, its staged folder, the job.

mlflow, scikit-learn and pandas are imported on call.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from devtools.builders import baseline_fields
from hokusai_registry.contract import MODEL_TYPES, baseline_model_name

METADATA = {"dataset": "leads-2026-11", "notes": "benchmark"}


def make_model() -> Any:
    """The benchmark's model: a small fitted LogisticRegression on three named float columns."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.random((40, 3)), columns=["f0", "f1", "f2"])
    target = (frame["f0"] > 0.5).astype(int)
    return LogisticRegression().fit(frame, target)


def signature_and_example(model: Any) -> tuple[Any, Any]:
    """The model's signature and a 3-row input example (the same frame it was fitted on)."""
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    frame = pd.DataFrame(np.random.default_rng(7).random((3, 3)), columns=["f0", "f1", "f2"])
    return infer_signature(frame, model.predict(frame)), frame


def explicit_requirements() -> list[str]:
    """The explicit pip requirements every 'cheap' variant passes (computed once, outside timings)."""
    import mlflow.sklearn

    return list(mlflow.sklearn.get_default_pip_requirements())


def stage_model(model: Any, staging: Path, requirements: list[str]) -> Path:
    """Save ``model`` in MLflow format under ``staging`` as a pipeline would (explicit requirements)."""
    import mlflow.sklearn

    target = staging / f"model-{uuid.uuid4().hex[:8]}"
    mlflow.sklearn.save_model(model, str(target), pip_requirements=requirements)
    return target


def job_fields(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    defaults = {"metadata": dict(METADATA), "token_id": "BENCH", "tags": {"user_id": "u-bench"}}
    return baseline_fields(model_dir, **{**defaults, **overrides})


def rotating_job_fields(model_dir: Path, n: int, **overrides: Any) -> dict[str, Any]:
    """Job ``n`` of a run: the model types in turn, so the run's webhooks go to four registered models.

    One model's webhooks are delivered in version order: a failed first attempt holds back that model's
    later versions for the first retry wait. Four models keep a run from being one queue behind one retry.
    """
    return job_fields(model_dir, metadata={"n": n}, model_type=MODEL_TYPES[n % len(MODEL_TYPES)], **overrides)


def all_versions(client: Any) -> list[Any]:
    """Every version of the four baseline models a run registers (paged)."""
    found: list[Any] = []
    for model_type in MODEL_TYPES:
        token = None
        while True:
            page = client.search_model_versions(
                f"name = '{baseline_model_name(model_type)}'", max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                break
    return found


def add_webhook_timing_arguments(parser: Any) -> None:
    """``--retry-schedule`` and ``--schedule-poll``: a short first retry wait, so the runs measure the workers."""
    parser.add_argument(
        "--retry-schedule",
        default="0.5,5,30",
        help="WEBHOOK_RETRY_SCHEDULE for the run (the default's first wait is 5 s)",
    )
    parser.add_argument("--schedule-poll", type=float, default=0.5, help="WEBHOOK_SCHEDULE_POLL_S for the run")


def webhook_timing_env(args: Any) -> dict[str, str]:
    """The workers' environment for :func:`add_webhook_timing_arguments`."""
    return {"WEBHOOK_RETRY_SCHEDULE": args.retry_schedule, "WEBHOOK_SCHEDULE_POLL_S": str(args.schedule_poll)}
