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
