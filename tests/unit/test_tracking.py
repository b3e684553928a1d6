"""MLflow tracking of training runs (training/tracking.py) and its hooks in training/runs.py.

MLflow 3 only resolves in .venv-train: run from the platform env (`make test`), this module re-runs itself
there (see test_loader.py) and asserts that those tests passed; the `platform` tests run in .venv."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_loader import HAS_PETASTORM, TRAIN_PYTHON, run_in_train_env

from mminterest.config import load_config

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(
    not (HAS_MLFLOW and HAS_PETASTORM), reason="mlflow imports only in .venv-train"
)
TINY = [
    "--epochs",
    "2",
    "--patience",
    "2",
    "--batch-size",
    "32",
    "--set",
    "emb_dim=8",
    "mlp_dims=[32]",
    "att_dims=[16]",
]


@pytest.mark.skipif(HAS_PETASTORM, reason="already in the training environment")
def test_tracking_in_the_training_environment():
    done = run_in_train_env(__file__, "-k", "not in_the_training_environment and not platform")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from training import train
    from training.synthetic import write_trainset

    base = tmp_path_factory.mktemp("tracking")
    root = write_trainset(base / "trainsets" / "syn")
    run = base / "models" / "ctr" / "r1-din-s0"
    train.main(["--model", "din", "--trainset", str(root), "--out", str(run), *TINY])
    return run


@needs_mlflow
def test_a_run_is_logged_once_registered_and_promoted_by_alias(trained_run, tmp_path):
    from training import tracking

    home = tmp_path / "home"
    info = tracking.log_run(trained_run, home)
    assert json.loads((trained_run / tracking.TRACKING_FILE).read_text()) == info
    assert info["tracking_uri"] == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = tracking.client(home)
    experiment = client.get_experiment_by_name("ctr/syn")
    found = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in found] == [info["run_id"]]
    run = found[0]
    assert run.info.run_name == "r1-din-s0" and run.info.status == "FINISHED"
    assert run.data.params["model"] == "din" and run.data.params["batch_size"] == "32"
    assert run.data.params["set.emb_dim"] == "8"
    metrics = json.loads((trained_run / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "valid_auc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(metrics["valid_auc_per_epoch"])
    assert run.data.metrics["final_valid_auc"] == pytest.approx(metrics["auc"])
    assert run.data.metrics["test_auc"] == pytest.approx(metrics["test"]["auc"])
    assert {"final_valid_gauc", "final_valid_logloss", "test_gauc", "test_logloss"} <= set(
        run.data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {
        "model/model.pt",
        "model/config.json",
        "model/vocab.json",
        "model/metrics.json",
    } <= artifacts
    assert (home / "mlflow" / "artifacts").is_dir() and any(
        (home / "mlflow" / "artifacts").rglob("model.pt")
    )
    versions = client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'")
    assert [(str(v.version), v.run_id) for v in versions] == [(info["version"], info["run_id"])]
    assert versions[0].source.endswith("/model")

    assert (
        tracking.log_run(trained_run, home) == info
    )  # logged again: no second run, no second version
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert len(client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'")) == 1

    tracking.promote(trained_run, home)
    champion = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION)
    assert str(champion.version) == info["version"] and champion.run_id == info["run_id"]


@needs_mlflow
def test_an_old_run_without_history_is_logged_under_ctr(tmp_path):
    from training import tracking

    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"auc": 0.7}))
    info = tracking.log_run(run, tmp_path / "home")
    client = tracking.client(tmp_path / "home")
    got = client.get_run(info["run_id"])
    assert info["experiment"] == "ctr" and got.data.metrics == {"final_valid_auc": 0.7}
    assert client.get_metric_history(info["run_id"], "valid_auc") == []


def _fake_run(path, auc):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"auc": auc}))
    return path


def test_platform_tracking_failure_is_a_warning_not_an_error(tmp_path, monkeypatch, capsys):
    from training import runs

    calls = []

    def failing(module, args, nproc=1):
        calls.append((module, args))
        raise runs.RunError(f"{module} exited 1")

    monkeypatch.setattr(runs, "spawn", failing)
    cfg = load_config(home=tmp_path / "mmi")
    run = _fake_run(cfg.models_dir / "ctr" / "a", 0.7)
    promoted, _ = runs.promote(cfg, run)
    assert (
        promoted and cfg.model_dir.resolve() == run.resolve()
    )  # the symlink stays the serving truth
    assert calls == [
        ("training.tracking", ["promote", "--run", str(run.resolve()), "--home", str(cfg.home)])
    ]
    assert "mlflow tracking failed: training.tracking exited 1" in capsys.readouterr().err


def test_platform_train_then_log_in_the_training_environment(tmp_path, monkeypatch):
    from training import runs

    calls = []
    monkeypatch.setattr(runs, "spawn", lambda module, args, nproc=1: calls.append((module, args)))
    monkeypatch.setattr(runs, "read_metrics", lambda run: {"auc": 0.7})
    cfg = load_config(home=tmp_path / "mmi")
    monkeypatch.setattr(runs, "trainset_path", lambda cfg, name: tmp_path)
    out, _ = runs.train(cfg, "din", "syn", out=tmp_path / "run")
    assert [m for m, _ in calls] == ["training.train", "training.tracking"]
    assert calls[1][1] == ["log", "--run", str(tmp_path / "run"), "--home", str(cfg.home)]


def test_platform_promote_sets_the_alias_through_the_training_environment(tmp_path):
    if not TRAIN_PYTHON.exists():
        pytest.skip(f"training environment missing: {TRAIN_PYTHON}")
    from training import runs

    cfg = load_config(home=tmp_path / "mmi")
    run = _fake_run(cfg.models_dir / "ctr" / "a", 0.7)
    assert runs.promote(cfg, run)[0]
    info = json.loads(
        (run / "mlflow.json").read_text()
    )  # written by training.tracking in .venv-train
    assert info["version"] == "1" and info["tracking_uri"].endswith("/mmi/mlflow/mlflow.db")
    assert (cfg.home / "mlflow" / "mlflow.db").exists()
