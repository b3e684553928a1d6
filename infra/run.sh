#!/usr/bin/env bash
# The README's main job (`make run`): the feature pipeline, then the training DAG, through Airflow
# (`airflow dags test`, no scheduler needed) on the embedded default, for one logical date.
#   MMI_RUN_DATE=2026-11-22 infra/run.sh        default date: today (UTC)
# Ends by printing where the tables, the report and the model are and how to start the ranker.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
DATE=${MMI_RUN_DATE:-$(date -u +%F)}
PY=.venv/bin/python

# "task=state ..." of the latest run of a DAG, from Airflow's metadata database
states() {
  "$PY" - "$1" <<'EOF'
import sqlite3, sys
from mminterest.config import get_config
db = sqlite3.connect(get_config().home / "airflow" / "airflow.db")
(run,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id=? ORDER BY id DESC LIMIT 1", sys.argv[1:]).fetchone()
rows = db.execute("SELECT task_id, state FROM task_instance WHERE dag_id=? AND run_id=? ORDER BY start_date",
                  (sys.argv[1], run)).fetchall()
print(" ".join(f"{t}={s}" for t, s in rows))
sys.exit(0 if rows and all(s in ("success", "skipped") for _, s in rows) else 1)
EOF
}

for dag in mm_feature_pipeline mm_training; do
  echo "run: $dag for $DATE (task logs stream below)"
  start=$SECONDS
  infra/airflow.sh dags test "$dag" "$DATE" || true  # the task states below decide
  if ! result=$(states "$dag"); then
    echo "run: $dag FAILED after $((SECONDS - start)) s: $result" >&2
    exit 1
  fi
  echo "run: $dag done in $((SECONDS - start)) s: $result"
done

"$PY" - <<'EOF'
from mminterest.config import get_config
c = get_config()
print(f"""
tables:   {c.home / 'delta'}  (quarantine: {c.table('quarantine')})
reports:  {c.reports_dir}  (validation, training metrics)
model:    {c.model_dir}  (promoted CTR model, served by the ranker)
ranker:   .venv/bin/mmi serve   then   curl -s localhost:{c.serve_port}/rank \\
            -H 'content-type: application/json' -d '{{"user_id": 1, "item_ids": [1, 2, 3]}}'""")
EOF
