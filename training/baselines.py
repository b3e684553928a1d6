"""A non-neural yardstick: gradient-boosted trees over target-encoded ids (platform env, scikit-learn).

`gbdt` fits HistGradientBoostingClassifier on the train split of a training-set folder with features
  - user_id and item_id, target-encoded (sklearn's TargetEncoder: cross-fitted on the train rows, so
    a row's encoding never used its own label; ids unseen in training get the prior),
  - hist_len (the user's number of past positives, point-in-time),
  - with `histograms`, the two l x n interest distributions (dist_img, dist_txt),
stops early on the valid split's log loss, and scores the test split. It writes the same
`test_predictions.npz` and `metrics.json` as a neural run, so reports compare it alike.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

ID_COLUMNS = ("user_id", "item_id")


def _read(root: Path, split: str, histograms: bool) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    columns = [*ID_COLUMNS, "label", "hist_len", "item_age_s"] + (
        ["dist_img", "dist_txt"] if histograms else []
    )
    table = pq.read_table(root / split, columns=columns)
    out = {c: table[c].to_numpy() for c in columns if not c.startswith("dist_")}
    for c in columns:
        if c.startswith("dist_"):
            flat = table[c].combine_chunks().flatten().to_numpy()
            out[c] = flat.reshape(len(table), -1)
    return out


def gbdt(root: str | Path, out: str | Path, histograms: bool = False, seed: int = 0) -> dict:
    """Fit on train, early-stop on valid, score test; write `out` (metrics.json, test_predictions.npz)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import TargetEncoder

    from training.metrics import auc, gauc, logloss
    from training.vocab import Vocab

    root, out = Path(root), Path(out)
    started = time.time()
    parts = {split: _read(root, split, histograms) for split in ("train", "valid", "test")}
    encoder = TargetEncoder(
        target_type="binary", cv=StratifiedKFold(5, shuffle=True, random_state=seed)
    )
    ids = {split: np.column_stack([p[c] for c in ID_COLUMNS]) for split, p in parts.items()}
    encoded = {"train": encoder.fit_transform(ids["train"], parts["train"]["label"])}
    encoded.update({s: encoder.transform(ids[s]) for s in ("valid", "test")})

    def features(split: str) -> np.ndarray:
        p = parts[split]
        extra = [p["dist_img"], p["dist_txt"]] if histograms else []
        return np.column_stack([encoded[split], p["hist_len"], *extra]).astype(np.float32)

    model = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_leaf_nodes=31,
        early_stopping=False,
        warm_start=True,
        random_state=seed,
    )
    best_rounds, best_loss = 0, np.inf
    for rounds in range(
        50, 801, 50
    ):  # early stopping: 50 more rounds while the valid log loss falls
        model.set_params(max_iter=rounds).fit(features("train"), parts["train"]["label"])
        loss = logloss(parts["valid"]["label"], model.predict_proba(features("valid"))[:, 1])
        if loss >= best_loss:
            break
        best_rounds, best_loss = rounds, loss
    best = model.set_params(max_iter=best_rounds, warm_start=False).fit(
        features("train"), parts["train"]["label"]
    )
    valid_score = best.predict_proba(features("valid"))[:, 1]
    test = parts["test"]
    score = best.predict_proba(features("test"))[:, 1]
    vocab = Vocab.load(root)
    known_item = vocab.item_index(test["item_id"]) > 0
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "test_predictions.npz",
        user_id=test["user_id"],
        label=test["label"],
        score=score,
        item_age_s=test["item_age_s"],
        known_item=known_item,
    )
    valid = parts["valid"]
    metrics = {
        "model": "gbdt_hist" if histograms else "gbdt",
        "auc": auc(valid["label"], valid_score),
        "gauc": gauc(valid["user_id"], valid["label"], valid_score),
        "logloss": logloss(valid["label"], valid_score),
        "rounds": int(best.max_iter),
        "test": {
            "auc": auc(test["label"], score),
            "gauc": gauc(test["user_id"], test["label"], score),
            "logloss": logloss(test["label"], score),
            "rows": int(len(score)),
        },
        "trainset": str(root.resolve()),
        "seed": seed,
        "train_seconds": round(time.time() - started, 2),
        "train_samples_per_s": round(
            len(parts["train"]["label"]) / max(time.time() - started, 1e-9), 1
        ),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
