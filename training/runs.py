"""Training runs seen from the platform env: spawn `training.train` / `training.evaluate` in .venv-train
(petastorm lives there), name run directories, promote a run (stdlib only: no torch import here).

Runs live under `<models_dir>/ctr/<run_id>`; `cfg.model_dir` (default `ctr/current`) is a symlink to the
promoted one, replaced atomically, so the ranker's model version is the run id.

Every trained run is also tracked in MLflow (`training.tracking` in .venv-train: params, per-epoch
validation AUC, the run directory as artifacts, a version of the registered model `mminterest-ctr`), and
promotion sets that registry's alias `champion` to the run's version. The symlink stays the source of
truth for serving: the online ranker runs in .venv, which cannot import MLflow 3, and loads `ctr/current`;
the alias mirrors it. A tracking failure never fails training or promotion: it prints a warning line
"mlflow tracking failed: ..." on stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from mminterest.config import REPO_ROOT, Config

TRAIN_ENV = REPO_ROOT / ".venv-train" / "bin"
METRICS_FILE = "metrics.json"


class RunError(RuntimeError):
    """A spawned training/evaluation process failed."""


def trainset_path(cfg: Config, name: str) -> Path:
    """The training set `name` (a name under <home>/trainsets, or a directory)."""
    path = Path(name) if "/" in name else cfg.home / "trainsets" / name
    if not (path / "meta.json").exists():
        raise FileNotFoundError(
            f"no training set at {path}; run `mmi trainset build --name {path.name}` first"
        )
    return path


def named_run_dir(cfg: Config, name: str) -> Path:
    """`<models_dir>/ctr/<name>` with every character outside [A-Za-z0-9._-] replaced by '-' (an
    orchestrator's run id such as "scheduled__2026-12-03T00:00:00+00:00-din")."""
    return cfg.models_dir / "ctr" / re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".-")


def new_run_dir(cfg: Config, model: str, seed: int) -> Path:
    """A fresh `<models_dir>/ctr/<UTC time>-<model>-s<seed>[-k]`."""
    base = (
        cfg.models_dir / "ctr" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{model}-s{seed}"
    )
    path, k = base, 1
    while path.exists():
        path, k = base.with_name(f"{base.name}-{k}"), k + 1
    return path


def spawn(module: str, args: list[str], nproc: int = 1) -> None:
    """Run `python -m module args` with .venv-train's interpreter (under torchrun when nproc > 1);
    its output streams through. RunError on a non-zero exit."""
    if nproc > 1:
        argv = [
            str(TRAIN_ENV / "torchrun"),
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            module,
            *args,
        ]
    else:
        argv = [str(TRAIN_ENV / "python"), "-m", module, *args]
    if not Path(argv[0]).exists():
        raise RunError(f"training environment missing: {argv[0]} (run `make setup`)")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdout=sys.stdout, stderr=sys.stderr)
    if done.returncode:
        raise RunError(f"{module} exited {done.returncode}: {' '.join(argv)}")


def train(
    cfg: Config,
    model: str,
    trainset: str,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    nproc: int = 1,
    max_steps: int = 0,
    overrides: list[str] | None = None,
    out: Path | None = None,
    patience: int = 2,
) -> tuple[Path, dict]:
    """Train one model in .venv-train (at most `epochs`, early stopping after `patience` epochs
    without a better validation AUC); (run dir, its metrics.json)."""
    out = out or new_run_dir(cfg, model, seed)
    args = [
        "--model",
        model,
        "--trainset",
        str(trainset_path(cfg, trainset)),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch_size),
        "--lr",
        str(lr),
        "--max-steps",
        str(max_steps),
        "--patience",
        str(patience),
    ]
    spawn("training.train", args + (["--set", *overrides] if overrides else []), nproc)
    track(cfg, "log", out)
    return out, read_metrics(out)


def track(cfg: Config, action: str, run: Path) -> bool:
    """`training.tracking log|promote --run RUN` in .venv-train (MLflow under `<home>/mlflow`); a failure
    is a warning on stderr, not an error. True when it worked."""
    try:
        spawn("training.tracking", [action, "--run", str(run), "--home", str(cfg.home)])
    except (RunError, OSError) as err:
        print(
            f"WARNING: mlflow tracking failed: {err} (the run and the promotion stand)",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


def read_metrics(run: Path) -> dict:
    return json.loads((Path(run) / METRICS_FILE).read_text())


def latest_run(cfg: Config) -> Path:
    runs = sorted(
        (
            p
            for p in (cfg.models_dir / "ctr").glob("*")
            if (p / METRICS_FILE).exists() and not p.is_symlink()
        ),
        key=lambda p: p.stat().st_mtime,
    )
    if not runs:
        raise FileNotFoundError(f"no trained run under {cfg.models_dir / 'ctr'}")
    return runs[-1]


def best_run(candidates: list[Path]) -> Path:
    """The candidate with the highest validation AUC (the first of equals)."""
    return max(candidates, key=lambda run: read_metrics(run)["auc"])


def promote(cfg: Config, run: Path) -> tuple[bool, str]:
    """Point `cfg.model_dir` at `run` when its validation AUC beats the promoted model's (or none is
    promoted); (promoted?, one-line reason)."""
    run = Path(run).resolve()
    new = read_metrics(run)["auc"]
    current = cfg.model_dir
    if (current / METRICS_FILE).exists():
        old = read_metrics(current)["auc"]
        if current.resolve() == run:
            return False, f"{run.name} is already promoted (validation AUC {new:.4f})"
        if not new > old:
            return (
                False,
                f"kept {current.resolve().name}: validation AUC {old:.4f} >= {new:.4f} of {run.name}",
            )
        reason = (
            f"promoted {run.name}: validation AUC {new:.4f} > {old:.4f} of {current.resolve().name}"
        )
    else:
        reason = f"promoted {run.name}: validation AUC {new:.4f} (nothing promoted before)"
    point_link(current, run)
    track(cfg, "promote", run)  # the registry alias `champion` mirrors the symlink
    return True, reason


def point_link(link: Path, target: Path) -> None:
    """Make `link` a symlink to the directory `target`, replaced atomically (readers see the old or
    the new target, never none): the one promotion step of CTR models and content encoders. A real
    directory at `link` is never deleted: FileExistsError."""
    link = Path(link)
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} is a real directory, not a link; move it away to promote")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(target).resolve(), target_is_directory=True)
    os.replace(tmp, link)


def run_path(cfg: Config, run: str | None) -> Path:
    """A run by id (under <models_dir>/ctr) or directory; None: the latest run."""
    if run is None:
        return latest_run(cfg)
    path = Path(run) if "/" in run else named_run_dir(cfg, run)
    if not (path / METRICS_FILE).exists():
        raise FileNotFoundError(f"no trained run at {path}")
    return path
