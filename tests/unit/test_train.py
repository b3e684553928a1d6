"""Training runs on a synthetic training set: learning, the run directory, torchrun (DDP, gloo) against one
process, promotion, and `mmi experiment`'s report. The petastorm-backed parts run in .venv-train (this
module re-runs itself there from the platform env, see test_loader.py)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
from test_loader import HAS_PETASTORM, TRAIN_PYTHON, run_in_train_env

from mminterest.config import REPO_ROOT, load_config

needs_petastorm = pytest.mark.skipif(
    not HAS_PETASTORM, reason="petastorm imports only in .venv-train"
)
FAST = [
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--set",
    "emb_dim=8",
    "mlp_dims=[32]",
    "att_dims=[16]",
]


@pytest.mark.skipif(HAS_PETASTORM, reason="already in the training environment")
def test_training_in_the_training_environment():
    done = run_in_train_env(__file__, "-k", "not in_the_training_environment and not platform")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from training.synthetic import write_trainset

    return write_trainset(tmp_path_factory.mktemp("ts") / "syn")


@needs_petastorm
def test_training_learns_and_writes_the_run_directory(root, tmp_path):
    from training import train
    from training.models import load_model
    from training.vocab import Vocab

    train.main(["--model", "din", "--trainset", str(root), "--out", str(tmp_path / "run"), *FAST])
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "model.pt",
        "config.json",
        "vocab.json",
        "metrics.json",
        "test_predictions.npz",
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auc"] > 0.65 and metrics["test"]["auc"] > 0.65, (
        metrics
    )  # the label signal is learnt
    assert (
        set(metrics["test"]) == {"auc", "gauc", "logloss", "rows"}
        and metrics["test"]["rows"] == 150
    )
    stored = np.load(run / "test_predictions.npz")
    again = train.evaluate(load_model(run), root, "test")
    assert np.allclose(again["score"], stored["score"], atol=1e-6)
    assert Vocab.load(run).n_items == Vocab.load(root).n_items


@needs_petastorm
def test_torchrun_two_processes_match_one_within_noise(root, tmp_path):
    from training import train

    for seed in (0, 1):
        train.main(
            [
                "--model",
                "din",
                "--trainset",
                str(root),
                "--out",
                str(tmp_path / f"one{seed}"),
                "--seed",
                str(seed),
                *FAST,
            ]
        )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [
            str(TRAIN_PYTHON.parent / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "training.train",
            "--model",
            "din",
            "--trainset",
            str(root),
            "--out",
            str(tmp_path / "ddp"),
            *FAST,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = [json.loads((tmp_path / f"one{s}" / "metrics.json").read_text()) for s in (0, 1)]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world"] == 2 and ddp["auc"] > 0.65
    noise = abs(one[0]["auc"] - one[1]["auc"])  # seed-to-seed spread of the single-process runs
    assert abs(ddp["auc"] - one[0]["auc"]) <= max(0.05, 2 * noise), (
        ddp["auc"],
        one[0]["auc"],
        noise,
    )


def _fake_run(path, auc):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"auc": auc}))
    return path


def test_platform_promote_only_a_better_run(tmp_path):
    from training import runs

    cfg = load_config(home=tmp_path / "mmi")
    ctr = cfg.models_dir / "ctr"
    first, worse, better = (
        _fake_run(ctr / n, a) for n, a in (("a", 0.70), ("b", 0.69), ("c", 0.71))
    )
    assert runs.promote(cfg, first)[0] and cfg.model_dir.resolve() == first
    promoted, reason = runs.promote(cfg, worse)
    assert not promoted and "kept a" in reason and cfg.model_dir.resolve() == first
    assert runs.promote(cfg, better)[0] and cfg.model_dir.resolve() == better
    assert runs.latest_run(cfg).name in {"a", "b", "c"}


def test_platform_cli_train_promote_and_experiment_report(tmp_path):
    if not TRAIN_PYTHON.exists():
        pytest.skip(f"training environment missing: {TRAIN_PYTHON}")
    from training.synthetic import write_trainset

    home = tmp_path / "mmi"
    write_trainset(home / "trainsets" / "syn")
    env = {**os.environ, "MMI_HOME": str(home)}
    mmi = [str(REPO_ROOT / ".venv" / "bin" / "mmi")]

    def cli(*args):
        return subprocess.run(
            mmi + list(args), env=env, capture_output=True, text=True, timeout=300
        )

    trained = cli("train", "--model", "dmae", "--trainset", "syn", *FAST)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert cli("promote").returncode == 0
    assert cli("promote").returncode == 99  # already promoted: nothing better
    evaluated = cli("evaluate", "--split", "test")
    assert evaluated.returncode == 0 and "item age decile 9" in evaluated.stdout, evaluated.stderr[
        -2000:
    ]

    spec = tmp_path / "e.yaml"
    spec.write_text(SPEC)
    done = cli("experiment", "--config", str(spec))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[14/14]" in done.stdout  # temporal 2 models x 2 seeds + 2 gbdt; 2 user folds x (2 + 2)
    report = home / "reports" / "experiments" / "e"
    assert {p.name for p in report.iterdir()} >= {
        "results.md",
        "runs.csv",
        "differences.csv",
        "cold_start.csv",
        "auc_difference.png",
        "cold_start_gain.png",
        "spec.yaml",
    }
    per_run = pd.read_csv(report / "runs.csv")
    assert per_run.groupby("protocol").size().to_dict() == {"temporal": 6, "user-kfold": 8}
    assert per_run["auc"].between(0.6, 1.0).all()
    neural = per_run[~per_run.model.str.startswith("gbdt")]
    assert (neural.epochs_run <= 3).all() and (neural.best_epoch <= neural.epochs_run).all()
    diffs = pd.read_csv(report / "differences.csv")
    assert set(diffs.protocol) == {"temporal", "user-kfold"} and (diffs.low <= diffs["diff"]).all()
    assert (diffs["diff"] <= diffs.high).all()
    text = (report / "results.md").read_text()
    assert "CiUBM lifts DIN" in text and ("**shown**" in text or "**not shown**" in text)
    again = cli("experiment", "--config", str(spec))  # every run exists: nothing is trained again
    assert again.returncode == 0 and "epoch 1" not in again.stdout


SPEC = """
name: e
trainset: syn
baseline: din
models: [din, {name: ciubm_din, model: ciubm_din, set: {emb_dim: 8}}]
protocols:
  temporal: {seeds: [7, 8]}
  user-kfold: {folds: 2, seeds: [7]}
train: {max_epochs: 3, patience: 1, batch_size: 32}
gbdt: true
bootstrap: 50
jobs: 2
claims:
  - claim: "CiUBM lifts DIN"
    pairs: [[ciubm_din, din]]
"""


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    import torch

    from training.train import EarlyStopping

    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    decisions = []
    for epoch, score in enumerate([0.60, 0.70, 0.69, 0.71, 0.70, 0.705]):
        with torch.no_grad():
            model.bias.fill_(float(epoch))
        decisions.append(stopper.update(epoch, score, model))
    assert decisions == [False, False, False, False, False, True]
    assert stopper.best_epoch == 3 and stopper.best == 0.71
    model.load_state_dict(stopper.state)
    assert float(model.bias) == 3.0  # the best epoch's weights, not the last


def test_platform_named_runs_resolve_and_the_best_candidate_is_compared(tmp_path):
    from training import runs

    cfg = load_config(home=tmp_path / "mmi")
    name = "scheduled__2026-12-03T00:00:00+00:00"
    din = _fake_run(runs.named_run_dir(cfg, f"{name}-din"), 0.70)
    dmae = _fake_run(runs.named_run_dir(cfg, f"{name}-dmae"), 0.72)
    assert din.name == "scheduled__2026-12-03T00-00-00-00-00-din"
    assert runs.run_path(cfg, f"{name}-dmae") == dmae  # the orchestrator's raw name finds the run
    _fake_run(cfg.models_dir / "ctr" / "manual", 0.99)  # newest and best, but not a candidate
    assert runs.best_run([din, dmae]) == dmae
    assert runs.promote(cfg, runs.best_run([din, dmae]))[0] and cfg.model_dir.resolve() == dmae
