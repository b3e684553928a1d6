"""Optional int8 storage of item vectors: per-vector symmetric scale (int8 codes + one float32 scale).

q = round(v / s) with s = max|v| / 127, so v ~ q * s. A D-dim float32 vector (4D bytes) becomes D + 4
bytes. `int8_report` measures what that saves and costs (cosine between each vector and its
dequantised copy) on the stored item_embeddings.
"""

from __future__ import annotations

import json

import numpy as np


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float -> (codes (N, D) int8, scales (N,) float32); a zero vector gets scale 1."""
    v = np.asarray(vectors, dtype=np.float32)
    scale = np.abs(v).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(v / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]


def cosine_error(vectors: np.ndarray) -> dict[str, float]:
    """1 - cos(v, dequantised v) over the rows: mean and max; plus bytes as float32 vs int8 + scale."""
    v = np.asarray(vectors, dtype=np.float32)
    back = dequantize_int8(*quantize_int8(v))
    cos = (v * back).sum(1) / np.maximum(
        np.linalg.norm(v, axis=1) * np.linalg.norm(back, axis=1), 1e-12
    )
    err = 1.0 - cos
    return {
        "vectors": len(v),
        "float32_bytes": int(v.size * 4),
        "int8_bytes": int(v.size + 4 * len(v)),
        "mean_cos_error": float(err.mean()) if len(v) else 0.0,
        "max_cos_error": float(err.max()) if len(v) else 0.0,
    }


def int8_report(cfg) -> str:
    """Measure int8 storage on cfg's item_embeddings (all vectors of each kind); write the JSON to
    <reports_dir>/int8_item_embeddings.json and return a one-line summary."""
    from deltalake import DeltaTable

    table = DeltaTable(cfg.table("item_embeddings")).to_pyarrow_table(
        columns=["img", "txt", "fused"]
    )
    report = {}
    for name in ("img", "txt", "fused"):
        rows = [r for r in table[name].to_pylist() if r is not None]
        report[name] = cosine_error(np.asarray(rows, dtype=np.float32).reshape(len(rows), -1))
    f32 = sum(r["float32_bytes"] for r in report.values())
    i8 = sum(r["int8_bytes"] for r in report.values())
    report["total"] = {
        "float32_bytes": f32,
        "int8_bytes": i8,
        "saved_bytes": f32 - i8,
        "saved_share": round(1 - i8 / f32, 4) if f32 else 0.0,
    }
    out = cfg.reports_dir / "int8_item_embeddings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    worst = max(report[n]["max_cos_error"] for n in ("img", "txt", "fused"))
    mean = {n: f"{report[n]['mean_cos_error']:.2e}" for n in ("img", "txt", "fused")}
    return (
        f"int8 storage: {f32:,} -> {i8:,} bytes (saved {f32 - i8:,}, {report['total']['saved_share']:.1%}), "
        f"mean cosine error {mean}, max {worst:.2e}; {out}"
    )
