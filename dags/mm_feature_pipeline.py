"""mm_feature_pipeline: raw files -> Delta feature tables -> Feast registry and online store, daily.

    ingest ──► embed_items ──┐
       └─────► behaviour ────┴─► interest_features ─► features_apply ─► features_materialize

- ingest: dataset adapter -> Great Expectations gate -> Delta interactions, items; bad rows go to
  quarantine with reasons. Past max_bad_fraction the job raises with the reports path, so the
  task (and the run) fails and the log shows where the reports are.
- embed_items (item_embeddings) and behaviour (user_behaviour) read different tables and run side
  by side; interest_features needs both.
- features_apply registers feature_repo/ in Feast; features_materialize loads the online views
  (incremental since their last run) up to the end of the run's data interval.
Each run processes its data interval [data_interval_start, data_interval_end) only (--start/--end):
ingest admits the interval's events (and late ones: earlier timestamps not admitted yet);
behaviour and interest_features recompute only the users with new events, from the earliest one
on; embed_items embeds only new or changed items. Clearing and re-running a run leaves the same
tables, and a backfill of N days leaves the tables of one run over the N days. See dags/README.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, CronDataIntervalTimetable
from mm_ops import DEFAULT_ARGS, WINDOW, WINDOW_END, mmi, spark_job

with DAG(
    dag_id="mm_feature_pipeline",
    # a day-long data interval per run: [D, D + 1 day) for logical date D (Airflow 3's "@daily"
    # alone is a cron trigger whose interval is empty); a manual run takes the last full day
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=10),
    default_args=DEFAULT_ARGS,
    tags=["mminterest", "features"],
    doc_md=__doc__,
):
    ingest = spark_job(
        "ingest",
        "ingest",
        timedelta(hours=1),
        "the interval's (and late) events -> GE gate -> Delta interactions, items, quarantine",
        args=WINDOW,
    )
    embed_items = spark_job(
        "embed_items",
        "embed_items",
        timedelta(hours=3),
        "items -> Delta item_embeddings (img, txt, fused)",
        pool="mm_item_embeddings",
    )
    behaviour = spark_job(
        "behaviour",
        "behaviour",
        timedelta(hours=1),
        "interactions -> Delta user_behaviour (point-in-time sequences)",
        args=WINDOW,
    )
    interest_features = spark_job(
        "interest_features",
        "interest_features",
        timedelta(hours=2),
        "similarity sequences and interest distributions",
        args=WINDOW,
    )
    features_apply = mmi(
        "features_apply",
        "features apply",
        timedelta(minutes=15),
        "register feature_repo/ definitions in Feast",
    )
    features_materialize = mmi(
        "features_materialize",
        f"features materialize {WINDOW_END}",
        timedelta(hours=1),
        "online views -> Feast online store (incremental, up to the interval's end)",
        pool="mm_online_store",
    )

    (
        ingest
        >> [embed_items, behaviour]
        >> interest_features
        >> features_apply
        >> features_materialize
    )
