"""mm_training: point-in-time training set -> DIN and a content-aware model -> evaluate -> promote, weekly.

    trainset_build ─► train_din ────► evaluate ─► promote
                  └─► train_content ┘

- trainset_build: Feast get_historical_features -> Parquet training set (the hand-off to training).
- train_din / train_content: DIN (ids only) and CONTENT_MODEL (reads item content vectors, so new
  items are scored by their content), each to convergence, into runs named after this DAG run.
- evaluate: both runs on the validation split, with the cold-start breakdown.
- promote: the better of the two on validation AUC, only if it beats the promoted model. "Not better"
  is not a failure: `mmi promote` exits 99, which marks the task skipped, and the promoted model stays.
Evaluate and promote name this DAG run's runs explicitly: a manual run beside it is never promoted.
Every step sees the run's logical date as MMI_LOGICAL_DATE.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG
from mm_ops import DEFAULT_ARGS, mmi

CONTENT_MODEL = "dmae"  # the content-aware contender (training/README.md: the evidence)
RUNS = {
    "din": "{{ run_id }}-din",
    CONTENT_MODEL: "{{ run_id }}-" + CONTENT_MODEL,
}  # run names of this DAG run

with DAG(
    dag_id="mm_training",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args=DEFAULT_ARGS,
    tags=["mminterest", "training"],
    doc_md=__doc__,
):
    trainset_build = mmi(
        "trainset_build",
        "trainset build",
        timedelta(hours=2),
        "Feast point-in-time join -> Parquet training set",
    )
    train = [
        mmi(
            f"train_{'din' if model == 'din' else 'content'}",
            f'train --model {model} --run-name "{name}"',
            timedelta(hours=6),
            f"train {model} to convergence",
        )
        for model, name in RUNS.items()
    ]
    named = " ".join(f'"{name}"' for name in RUNS.values())
    evaluate = mmi(
        "evaluate",
        f"evaluate --run {named}",
        timedelta(hours=1),
        "score both candidates on the validation split",
    )
    promote = mmi(
        "promote",
        f"promote --run {named}",
        timedelta(minutes=15),
        "promote the better candidate only if it beats the promoted model on validation",
        retries=0,
        skip_on_exit_code=99,
    )

    trainset_build >> train >> evaluate >> promote
