# The two commands of the README: `make run` (main job, embedded default) and `make test`.
# Both set up whatever is missing first (infra/setup.sh is idempotent).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
VENV := .venv/bin

.PHONY: setup run test bench
setup:
	@infra/setup.sh

run: setup
	infra/run.sh

test: setup
	$(VENV)/python -m pytest tests

bench: setup
	$(VENV)/mmi bench $(NAME)

# A local Airflow (scheduler, DAG processor, API server + UI on 127.0.0.1:$(AIRFLOW_PORT)) in the
# background, stopped by its pids; the screenshot needs it up and a run of $(DAG) to show.
.PHONY: airflow-up airflow-down airflow-screenshot
AIRFLOW_PORT ?= 8080
DAG ?= mm_new_items
OUT ?= docs/airflow-grid.png
airflow-up: setup
	infra/airflow.sh up --port $(AIRFLOW_PORT)

airflow-down:
	infra/airflow.sh down

airflow-screenshot:
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium (apt)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(VENV)/python -m infra.ui_screenshot $(DAG) $(OUT)

# Backfill = rebuild through Airflow's own backfill on a local scheduler (its own, on a free port),
# over the data's last $(DAYS) days; report in $$MMI_HOME/reports/backfill_proof.json.
.PHONY: airflow-backfill-proof
DAYS ?= 30
airflow-backfill-proof: setup
	nice -n 10 infra/airflow.sh backfill-proof $(DAYS)
