#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: apt packages (JDK 17, redis-server) and the two Python
# environments. A second call finds everything in place and returns in seconds.
#   .venv        platform: Spark jobs, Feast, Airflow, Great Expectations, serving, models
#   .venv-train  training input: petastorm (needs pyarrow < 13, which Feast/pyspark 4 cannot share)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} (apt)"
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# make_env DIR REQUIREMENTS LOCK: (re)build DIR only when its inputs changed since the last build.
make_env() {
  local dir=$1 req=$2 lock=$3 stamp=$1/.mmi-stamp digest
  digest=$(cat "$req" "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then return; fi
  echo "setup: building $dir from $req (pinned by $lock)"
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --upgrade pip
  "$dir/bin/pip" install -q torch==2.13.0  # first: the CPU wheel; an unpinned torch pulls CUDA
  "$dir/bin/pip" install -q -r "$req" -c "$lock"
  "$dir/bin/pip" install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
  echo "$digest" > "$stamp"
}
make_env .venv requirements.txt requirements.lock
make_env .venv-train requirements-train.txt requirements-train.lock
