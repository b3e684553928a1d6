"""`mmi experiment`: train and evaluate models x seeds on one training set, then write a report folder
`<home>/reports/experiments/<name>/`: results.md, results.csv (mean and std of test AUC, GAUC, logloss per
model), runs.csv (one row per run), cold_start.csv (AUC per item-age decile), auc.png (AUC per model with
std error bars), cold_start_gain.png (AUC gain by item-age decile) and config.json (the exact settings).

Each run is a `training.train` process in .venv-train (runs.train); aggregation and plots run here.
Deciles are cut on the test rows' item ages, so they are the same for every model.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Sequence
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from mminterest.config import Config, get_config
from training import runs
from training.metrics import cold_start

METRICS = ("auc", "gauc", "logloss")


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def run(cfg: Config | None = None, models: Sequence[str] = ("din",), seeds: int = 3, trainset: str = "default",
        name: str | None = None, epochs: int = 1, batch_size: int = 256, lr: float = 1e-3,
        overrides: Sequence[str] = (), max_steps: int = 0, nproc: int = 1) -> Path:
    """Train every model with seeds cfg.seed .. cfg.seed + seeds - 1; write the report; return its folder."""
    cfg = cfg or get_config()
    root = runs.trainset_path(cfg, trainset)
    name = name or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = cfg.reports_dir / "experiments" / name
    out.mkdir(parents=True, exist_ok=True)
    config = {"name": name, "models": list(models), "seeds": [cfg.seed + k for k in range(seeds)],
              "trainset": str(root), "trainset_meta": json.loads((root / "meta.json").read_text()),
              "epochs": epochs, "batch_size": batch_size, "lr": lr, "overrides": list(overrides),
              "max_steps_per_epoch": max_steps, "nproc": nproc, "command": sys.argv,
              "machine": platform.platform()}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    rows, deciles = [], []
    jobs = list(product(models, config["seeds"]))
    started = time.time()
    for k, (model, seed) in enumerate(jobs, 1):
        print(f"[{k}/{len(jobs)}] {model} seed {seed} ({time.time() - started:.0f} s so far)", flush=True)
        run_dir, metrics = runs.train(cfg, model, str(root), seed, epochs, batch_size, lr, nproc, max_steps,
                                      list(overrides))
        pred = np.load(run_dir / "test_predictions.npz")
        cold = cold_start(pred["label"], pred["score"], pred["item_age_s"], pred["known_item"])
        rows.append({"model": model, "seed": seed, "run": run_dir.name, **metrics["test"],
                     "valid_auc": metrics["auc"], "new_items_auc": cold["new_items"]["auc"],
                     "new_items_rows": cold["new_items"]["rows"], "train_seconds": metrics["train_seconds"],
                     "train_samples_per_s": metrics["train_samples_per_s"]})
        deciles += [{"model": model, "seed": seed, **d} for d in cold["deciles"]]
    write_report(out, pd.DataFrame(rows), pd.DataFrame(deciles), config)
    print(f"experiment {name}: {len(models)} models x {seeds} seeds in {time.time() - started:.0f} s -> {out}")
    return out


def summarise(per_run: pd.DataFrame) -> pd.DataFrame:
    """Mean and std per model, in the order the models were given."""
    order = list(dict.fromkeys(per_run["model"]))
    cols = [*METRICS, "valid_auc", "new_items_auc", "train_samples_per_s"]
    g = per_run.groupby("model", sort=False)
    out = pd.DataFrame({"runs": g.size()})
    for c in cols:
        out[f"{c}_mean"] = g[c].mean()
        out[f"{c}_std"] = g[c].agg(_std)
    return out.loc[order].reset_index()


def gains(cold: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """AUC gain per item-age decile over `baseline` (mean over seeds), one column per other model, and
    CiUBM's lift over its own backbone as `ciubm_X / X`."""
    auc = cold.pivot_table(index="decile", columns="model", values="auc", aggfunc="mean")
    out = pd.DataFrame(index=auc.index)
    for m in auc.columns:
        if m != baseline and baseline in auc.columns:
            out[f"{m} - {baseline}"] = auc[m] - auc[baseline]
        backbone = m.removeprefix("ciubm_")
        if m.startswith("ciubm_") and backbone in auc.columns and backbone != baseline:
            out[f"{m} - {backbone}"] = auc[m] - auc[backbone]
    return out


def write_report(out: Path, per_run: pd.DataFrame, cold: pd.DataFrame, config: dict) -> None:
    summary = summarise(per_run)
    per_run.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "results.csv", index=False)
    by_decile = (cold.groupby(["model", "decile"], sort=False)
                 .agg(rows=("rows", "first"), max_age_days=("max_age_days", "first"), auc_mean=("auc", "mean"),
                      auc_std=("auc", _std)).reset_index())
    by_decile.to_csv(out / "cold_start.csv", index=False)
    models = list(summary["model"])
    baseline = "din" if "din" in models else models[0]
    gain = gains(cold, baseline)
    plot(out, summary, gain, baseline)
    meta = config["trainset_meta"]
    lines = [f"# Experiment {config['name']}", "",
             f"Training set `{meta.get('name')}`: rows {meta['rows']}, temporal cuts {meta.get('cuts')}; "
             f"{len(config['seeds'])} seeds {config['seeds']}, {config['epochs']} epoch(s), batch "
             f"{config['batch_size']}, lr {config['lr']}, overrides {config['overrides'] or 'none'}. "
             "Metrics on the test split (the latest 10% of events); mean ± std over seeds.", "",
             "| model | AUC | GAUC | logloss | valid AUC | new-item AUC | train samples/s |",
             "|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.model} | {r.auc_mean:.4f} ± {r.auc_std:.4f} | {r.gauc_mean:.4f} ± {r.gauc_std:.4f} | "
                     f"{r.logloss_mean:.4f} ± {r.logloss_std:.4f} | {r.valid_auc_mean:.4f} ± {r.valid_auc_std:.4f} | "
                     f"{r.new_items_auc_mean:.4f} | {r.train_samples_per_s_mean:,.0f} |")
    auc = by_decile.pivot_table(index="decile", columns="model", values="auc_mean", sort=False)[models]
    edges = by_decile.groupby("decile")[["max_age_days", "rows"]].first()
    lines += ["", "## Cold start: test AUC by item-age decile (mean over seeds)", "",
              "| decile | item age <= days | rows | " + " | ".join(models) + " |",
              "|---" * (len(models) + 3) + "|"]
    for d, row in auc.iterrows():
        lines.append(f"| {d} | {edges.loc[d, 'max_age_days']:.1f} | {edges.loc[d, 'rows']:,} | "
                     + " | ".join(f"{v:.4f}" for v in row) + " |")
    if len(gain.columns):
        lines += ["", "## AUC gain by item-age decile", "", "| decile | " + " | ".join(gain.columns) + " |",
                  "|---" * (len(gain.columns) + 1) + "|"]
        lines += [f"| {d} | " + " | ".join(f"{v:+.4f}" for v in row) + " |" for d, row in gain.iterrows()]
    lines += ["", "Files: results.csv, runs.csv, cold_start.csv, auc.png, cold_start_gain.png, config.json.", ""]
    (out / "results.md").write_text("\n".join(lines))


def plot(out: Path, summary: pd.DataFrame, gain: pd.DataFrame, baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(summary)), 3.5))
    ax.bar(summary["model"], summary["auc_mean"], yerr=summary["auc_std"], capsize=4, color="tab:blue")
    low = (summary["auc_mean"] - summary["auc_std"]).min()
    ax.set_ylim(max(0.0, low - 0.02), min(1.0, (summary["auc_mean"] + summary["auc_std"]).max() + 0.01))
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "auc.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    for col in gain.columns:
        # solid: gain over the baseline; dashed: CiUBM's lift over its own backbone
        ax.plot(gain.index, gain[col], marker="o", label=col, linestyle="-" if col.endswith(f" - {baseline}") else "--")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("item-age decile (0 = newest items)")
    ax.set_ylabel("test AUC gain")
    ax.set_title("AUC gain by item age")
    if len(gain.columns):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "cold_start_gain.png", dpi=120)
    plt.close(fig)
