"""MLflow run tracking and the model registry (runs in .venv-train, where MLflow 3 resolves; the platform
env's cachetools and gunicorn pins exclude it there).

`python -m training.tracking log --run RUN_DIR [--home HOME]` logs one run directory: an experiment per
training set (`ctr/<training set>`, or `ctr` when metrics.json names none), run name = the run directory's
name, the parameters, `valid_auc` per epoch (step = epoch, from 1), the final metrics (`final_valid_auc`,
`_gauc`, `_logloss` of the kept best epoch; `test_auc`, `test_gauc`, `test_logloss`), the whole run
directory as artifacts under `model/`, and a version of the registered model `mminterest-ctr` whose source
is those artifacts. The MLflow run id and model version go to `<run>/mlflow.json`, so logging a run again
changes nothing. `python -m training.tracking promote --run RUN_DIR` points the registry alias `champion`
at the run's version (logging the run first when needed); `training/runs.py` calls both.

The backend is local, under the project's home: tracking and registry in `sqlite:///<home>/mlflow/mlflow.db`,
artifacts in `<home>/mlflow/artifacts/`. Browse with `.venv-train/bin/mlflow ui --backend-store-uri
sqlite:///<home>/mlflow/mlflow.db`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault(
    "MLFLOW_DISABLE_TELEMETRY", "true"
)  # no usage reports from an offline machine

from mminterest.config import get_config  # noqa: E402

REGISTERED_MODEL = "mminterest-ctr"
CHAMPION = "champion"
TRACKING_FILE = "mlflow.json"
ARTIFACT_PATH = "model"
PARAMS = (
    "model",
    "trainset",
    "seed",
    "batch_size",
    "lr",
    "max_epochs",
    "patience",
    "world",
    "epochs_run",
    "best_epoch",
)


def tracking_root(home: Path | None = None) -> Path:
    return Path(home or get_config().home) / "mlflow"


def tracking_uri(home: Path | None = None) -> str:
    return f"sqlite:///{tracking_root(home) / 'mlflow.db'}"


def client(home: Path | None = None):
    """An MlflowClient on the local backend (tracking and registry in the same SQLite file)."""
    from mlflow import MlflowClient

    root = tracking_root(home)
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri(home), registry_uri=tracking_uri(home))


def experiment_name(metrics: dict) -> str:
    trainset = metrics.get("trainset")
    return f"ctr/{Path(trainset).name}" if trainset else "ctr"


def _experiment_id(mlflow_client, name: str, home: Path | None) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # an explicit artifact location: the SQLite store's default is ./mlruns under the working directory
    location = tracking_root(home) / "artifacts" / re.sub(r"[^A-Za-z0-9._-]", "-", name)
    try:
        return mlflow_client.create_experiment(name, artifact_location=location.as_uri())
    except Exception:  # created by a concurrent process in between
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _params(metrics: dict) -> dict[str, str]:
    params = {k: metrics[k] for k in PARAMS if metrics.get(k) is not None}
    for key, value in (metrics.get("overrides") or {}).items():
        params[f"set.{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return {k: str(v)[:6000] for k, v in params.items()}


def _final_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for key in ("auc", "gauc", "logloss"):
        if isinstance(metrics.get(key), (int, float)):
            out[f"final_valid_{key}"] = float(metrics[key])  # the kept (best) epoch's weights
        if isinstance((metrics.get("test") or {}).get(key), (int, float)):
            out[f"test_{key}"] = float(metrics["test"][key])
    for key in ("train_seconds", "train_samples_per_s"):
        if isinstance(metrics.get(key), (int, float)):
            out[key] = float(metrics[key])
    return out


def read_tracking(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / TRACKING_FILE
    return json.loads(path.read_text()) if path.exists() else None


def log_run(run_dir: str | Path, home: Path | None = None) -> dict:
    """Log `run_dir` (params, per-epoch `valid_auc`, final metrics, artifacts, a registered model version)
    unless its mlflow.json says it is logged already; returns mlflow.json's content
    ({"run_id", "experiment", "model", "version", "tracking_uri"})."""
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir).resolve()
    mlflow_client = client(home)
    known = read_tracking(run_dir)
    if known and known.get("tracking_uri") == tracking_uri(home):
        try:
            mlflow_client.get_run(known["run_id"])
            return known
        except Exception:  # the backend was reset: log again
            pass
    metrics = json.loads((run_dir / "metrics.json").read_text())
    experiment = experiment_name(metrics)
    tags = {"mminterest.run_dir": str(run_dir), "mminterest.model": str(metrics.get("model", ""))}
    run = mlflow_client.create_run(
        _experiment_id(mlflow_client, experiment, home), run_name=run_dir.name, tags=tags
    )
    run_id = run.info.run_id
    try:
        now = run.info.start_time
        history = [
            Metric("valid_auc", float(a), now, epoch)
            for epoch, a in enumerate(metrics.get("valid_auc_per_epoch") or [], start=1)
        ]
        final = [Metric(k, v, now, 0) for k, v in _final_metrics(metrics).items()]
        params = [Param(k, v) for k, v in _params(metrics).items()]
        mlflow_client.log_batch(run_id, metrics=history + final, params=params)
        for path in sorted(run_dir.iterdir()):
            if path.is_file() and path.name != TRACKING_FILE:
                mlflow_client.log_artifact(run_id, str(path), ARTIFACT_PATH)
        try:
            mlflow_client.create_registered_model(REGISTERED_MODEL)
        except Exception:  # it exists already (RESOURCE_ALREADY_EXISTS)
            pass
        source = f"{run.info.artifact_uri}/{ARTIFACT_PATH}"
        version = mlflow_client.create_model_version(
            REGISTERED_MODEL,
            source,
            run_id=run_id,
            tags={"run": run_dir.name},
            await_creation_for=0,
        )
    except BaseException:
        mlflow_client.set_terminated(run_id, "FAILED")
        raise
    mlflow_client.set_terminated(run_id, "FINISHED")
    info = {
        "run_id": run_id,
        "experiment": experiment,
        "model": REGISTERED_MODEL,
        "version": str(version.version),
        "tracking_uri": tracking_uri(home),
    }
    (run_dir / TRACKING_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def promote(run_dir: str | Path, home: Path | None = None) -> dict:
    """Point the registry alias `champion` of `mminterest-ctr` at `run_dir`'s model version (logging the
    run first when it is not tracked yet); returns mlflow.json's content."""
    info = log_run(run_dir, home)
    client(home).set_registered_model_alias(REGISTERED_MODEL, CHAMPION, info["version"])
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.tracking", description=__doc__.splitlines()[0]
    )
    p.add_argument("action", choices=("log", "promote"))
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--home", type=Path, help="the project's home (default: the config's, MMI_HOME)")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the SQLite schema set-up on first use
    if args.action == "log":
        info = log_run(args.run, args.home)
        print(
            f"mlflow: run {Path(args.run).name} -> run {info['run_id']} in {info['experiment']!r}, "
            f"{info['model']} version {info['version']} ({info['tracking_uri']})",
            flush=True,
        )
    else:
        info = promote(args.run, args.home)
        print(
            f"mlflow: alias {CHAMPION!r} of {info['model']} -> version {info['version']} "
            f"({Path(args.run).name})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
