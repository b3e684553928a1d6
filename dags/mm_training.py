"""mm_training: point-in-time training set -> train -> evaluate -> promote, weekly.

    trainset_build ─► train ─► evaluate ─► promote

- trainset_build: Feast get_historical_features -> Parquet training set (the hand-off to training).
- train / evaluate: the CTR model; evaluate scores it on the validation split.
- promote: promotes the candidate only if it beats the promoted model on validation. "Not better"
  is not a failure: `mmi promote` exits 0 (or 99, which marks the task skipped) and the promoted
  model stays.
Every step sees the run's logical date as MMI_LOGICAL_DATE.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from mm_ops import DEFAULT_ARGS, mmi

with DAG(
    dag_id="mm_training",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args=DEFAULT_ARGS,
    tags=["mminterest", "training"],
    doc_md=__doc__,
):
    trainset_build = mmi("trainset_build", "trainset build", timedelta(hours=2),
                         "Feast point-in-time join -> Parquet training set")
    train = mmi("train", "train", timedelta(hours=6), "train the candidate model")
    evaluate = mmi("evaluate", "evaluate", timedelta(hours=1),
                   "score the candidate on the validation split")
    promote = mmi("promote", "promote", timedelta(minutes=15),
                  "promote the candidate only if it beats the promoted model on validation",
                  retries=0, skip_on_exit_code=99)

    trainset_build >> train >> evaluate >> promote
