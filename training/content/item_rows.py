"""Item rows of `item_embeddings`, shared by the Spark embedding job and new-item inference (no Spark).

`content_hash` is what an embedding depends on, so the job skips items whose hash is stored;
`embed_frame` turns catalogue rows into embedding rows with one encoder call.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd


def content_hash(
    version: str, text: str | None, category: str | None, image: bytes | str | None
) -> str:
    """sha256 hex of what an embedding depends on; `image` is the file's bytes or its path (read here)."""
    digest = hashlib.sha256("\0".join([version, category or "", text or ""]).encode())
    if isinstance(image, str):
        path = image
        try:
            image = Path(path).read_bytes()
        except OSError:
            image = f"unreadable:{path}".encode()
    digest.update(b"\0" + hashlib.sha256(image).digest() if image is not None else b"\0none")
    return digest.hexdigest()


def embed_frame(
    encoder, version: str, frame: pd.DataFrame, images: list, batch_size: int
) -> pd.DataFrame:
    """item_embeddings rows for `frame` (item_id, text, content_hash, valid_from_ts, updated_ts);
    `images` (paths, PIL images or None) are row-aligned with it."""
    out = encoder.embed(frame["text"].fillna("").tolist(), images, batch_size=batch_size)
    has_img = out["img_mask"]
    keep = frame[["item_id", "content_hash", "valid_from_ts", "updated_ts"]].reset_index(drop=True)
    return keep.assign(
        encoder_version=version,
        img=[v if h else None for v, h in zip(out["img"], has_img)],
        txt=list(out["txt"]),
        fused=list(out["fused"]),
        has_img=has_img,
    )
