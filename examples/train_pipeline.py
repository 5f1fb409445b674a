"""An example training pipeline: train a lead-scoring model, then enqueue its registration.

Run it with a worker running (``celery -A worker worker``) and the same environment
(``REDIS_URL``, ``HOKUSAI_HOME``): it prints the job id and exits; it never waits for MLflow.
The model is staged under ``$HOKUSAI_HOME/staging/<job_id>``; the worker removes that folder once
the version exists.

    python examples/train_pipeline.py
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from producers import save_and_enqueue

FEATURES = ["visits", "email_opens", "company_size", "days_since_contact"]


def make_leads(rows: int, seed: int = 11) -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic leads: more visits and opens, and a recent contact, convert more often."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "visits": rng.poisson(5, rows).astype("float64"),
            "email_opens": rng.poisson(2, rows).astype("float64"),
            "company_size": rng.lognormal(4, 1, rows),
            "days_since_contact": rng.integers(0, 90, rows).astype("float64"),
        }
    )
    score = 0.4 * frame.visits + 0.6 * frame.email_opens - 0.05 * frame.days_since_contact
    converted = (score + rng.normal(0, 1, rows) > score.median()).astype(int)
    return frame, converted


def train() -> tuple[LogisticRegression, float, pd.DataFrame]:
    features, target = make_leads(2_000)
    model = LogisticRegression(max_iter=500).fit(features[:1_500], target[:1_500])
    auc = float(roc_auc_score(target[1_500:], model.predict_proba(features[1_500:])[:, 1]))
    return model, auc, features


def signature_dict() -> dict[str, Any]:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("double", name) for name in FEATURES])
    outputs = Schema([ColSpec("long", "converted")])
    return ModelSignature(inputs=inputs, outputs=outputs).to_dict()


def main() -> str:
    model, auc, features = train()
    job_id = save_and_enqueue(
        model,
        {
            "kind": "baseline",
            "model_type": "lead_scoring",
            "metadata": {
                "dataset": {"name": "synthetic-leads", "rows": 2_000, "features": FEATURES},
                "metrics": {"auc": round(auc, 4)},
                "model_card": "Logistic regression on synthetic lead data. " * 15,
            },
            "signature": signature_dict(),
            "input_example": features.head(3).to_dict(orient="records"),
            "token_id": "LEADSCORE",
            "tags": {"user_id": "demo-user"},
            "primary_metric": "auc",
            "eval_spec": "holdout-25pct",
        },
        pip_requirements=["scikit-learn", "pandas", "numpy"],
    )
    print(json.dumps({"job_id": job_id, "holdout_auc": round(auc, 4)}))
    return job_id


if __name__ == "__main__":
    main()
