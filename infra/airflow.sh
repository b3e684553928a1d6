#!/usr/bin/env bash
# Airflow for mminterest, embedded default: SQLite metadata under $MMI_HOME/airflow, DAGs from dags/.
#
#   infra/airflow.sh                      set up (idempotent) and print where things are
#   infra/airflow.sh ARGS...              set up, then run `airflow ARGS...` in that environment
#   infra/airflow.sh dags test mm_feature_pipeline 2026-11-22      one run, no scheduler needed
#   infra/airflow.sh standalone           scheduler + dag-processor + api-server (UI on :8080)
#   infra/airflow.sh up [--port 8080]     the same three daemons on 127.0.0.1, in the background,
#   infra/airflow.sh status|down          stopped by their pids (infra/airflow_local.py)
#   infra/airflow.sh trigger DAG [--wait] a run through the REST API of the daemons `up` started
#   infra/airflow.sh backfill-proof [DAYS]  backfill = rebuild over the data's last DAYS days, through
#                                         the local scheduler's backfill (infra/backfill_proof.py)
#
# Set-up runs once per (Airflow version, Spark master): `airflow db migrate`, the `spark_default`
# connection (host = the config's spark_master, local[*] by default; re-created when the config
# changes) and the pools that serialise writers of shared tables. A second call costs ~0.1 s.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || { echo "airflow.sh: $PY missing; run infra/setup.sh first" >&2; exit 1; }
case "${1:-}" in  # the background daemons: set up and started by the module (through this script)
  up|down|status|trigger) cd "$REPO" && exec "$PY" -m infra.airflow_local "$@" ;;
  backfill-proof) shift; cd "$REPO" && exec "$PY" -m infra.backfill_proof "$@" ;;
esac

# One python call: the config's home and Spark master (MMI_* overrides apply), Airflow's version.
{ read -r MMI_HOME_DIR; read -r SPARK_MASTER; read -r AIRFLOW_VERSION; } < <(
  cd "$REPO" && "$PY" -c 'from importlib.metadata import version
from mminterest.config import get_config
c = get_config(); print(c.home); print(c.spark_master); print(version("apache-airflow-core"))')

export AIRFLOW_HOME="$MMI_HOME_DIR/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=30
export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PATH="$REPO/.venv/bin:$PATH"

STAMP="$AIRFLOW_HOME/.mmi-setup"
WANT="airflow $AIRFLOW_VERSION; spark_default $SPARK_MASTER"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || [ ! -f "$AIRFLOW_HOME/airflow.db" ]; then
  mkdir -p "$AIRFLOW_HOME"
  echo "airflow.sh: setting up $AIRFLOW_HOME ($WANT)" >&2
  airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 \
    || { cat "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
  # The connection, in the provider's convention (host holds local[*] or spark://host, port apart),
  # and the pools, in one interpreter: three CLI calls would cost ~3 s each.
  SPARK_MASTER="$SPARK_MASTER" "$PY" - <<'EOF' 2>"$AIRFLOW_HOME/connections.log" \
    || { cat "$AIRFLOW_HOME/connections.log" >&2; exit 1; }
import os, re
from airflow.models import Connection, Pool
from airflow.utils.session import create_session

master = os.environ["SPARK_MASTER"]
m = re.fullmatch(r"(\w+://[^:/]+):(\d+)", master)
host, port = (m.group(1), int(m.group(2))) if m else (master, None)
with create_session() as session:
    conn = session.query(Connection).filter(Connection.conn_id == "spark_default").one_or_none()
    if conn is None:
        conn = Connection(conn_id="spark_default")
        session.add(conn)
    conn.conn_type, conn.host, conn.port = "spark", host, port
    conn.description = "Spark master of the mminterest jobs (config spark_master)"
    for name, doc in [("mm_item_embeddings", "one writer of Delta item_embeddings at a time"),
                      ("mm_online_store", "one materialisation into the online store at a time")]:
        pool = session.query(Pool).filter(Pool.pool == name).one_or_none()
        if pool is None:
            session.add(Pool(pool=name, slots=1, description=doc, include_deferred=False))
print(f"spark_default -> {host}" + (f":{port}" if port else ""))
EOF
  echo "$WANT" >"$STAMP"
fi

if [ $# -eq 0 ]; then
  echo "AIRFLOW_HOME=$AIRFLOW_HOME"
  echo "dags folder: $AIRFLOW__CORE__DAGS_FOLDER; spark_default: $SPARK_MASTER"
  exit 0
fi
exec airflow "$@"
