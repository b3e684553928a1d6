"""mm_new_items: embed newly arrived items and publish them online, every 15 minutes.

    embed_new_items ─► features_materialize

The same job as the daily pipeline's embed_items: it is expected to embed only items whose
embedding is missing or stale (content_hash), so a run with no new item is cheap; materialize
pushes the new rows of item_embeddings to the online store.
Pools keep these writers and the daily pipeline's from running at the same time (one writer of
item_embeddings, one materialisation); a run never overlaps the next (max_active_runs=1).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG
from mm_ops import DEFAULT_ARGS, mmi, spark_job

with DAG(
    dag_id="mm_new_items",
    schedule="*/15 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=14),
    default_args={**DEFAULT_ARGS, "retries": 1, "retry_delay": timedelta(minutes=1)},
    tags=["mminterest", "features", "new-items"],
    doc_md=__doc__,
):
    embed_new_items = spark_job(
        "embed_new_items",
        "embed_items",
        timedelta(minutes=10),
        "embed items without a current embedding",
        pool="mm_item_embeddings",
    )
    features_materialize = mmi(
        "features_materialize",
        "features materialize",
        timedelta(minutes=5),
        "new embeddings -> online store",
        pool="mm_online_store",
    )

    embed_new_items >> features_materialize
