"""New-item inference (MIM's RIM): embed items from text + image and publish them within the call.

`add_items` validates each item, embeds it with the current content encoder (cfg.encoder_dir, else
the base encoder; loaded once per process), stores its image under <home>/images/, upserts the rows
into the Delta tables `items` and `item_embeddings` with delta-rs (no Spark) and writes the vectors
to the Feast online store, so `OnlineFeatures.fetch` serves them at once, all or nothing: each Delta
commit is retried on conflicts with concurrent writers, and a write that still fails undoes the
earlier ones. The rows carry the same content_hash as the embedding job computes, so its next run
skips them; an embedding job that computed an older vector meanwhile does not overwrite them.
"""

from __future__ import annotations

import io
import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from mminterest import schemas
from mminterest.config import Config

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_CATEGORY_CHARS = 200
ONLINE_COLUMNS = [
    "item_id",
    "encoder_version",
    *schemas.VECTORS,
    *schemas.ITEM_ATTRIBUTES,
    "valid_from_ts",
]
log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[str, tuple] = {}  # "current" -> (folder key, encoder)
_versions: weakref.WeakKeyDictionary = (
    weakref.WeakKeyDictionary()
)  # encoder -> encoder_version (serving never trains)


class NewItemError(ValueError):
    """An item was refused (the reason says why); nothing of the call was written."""


def load_encoder(cfg: Config):
    """The current content encoder, loaded once per process (again after a new promotion)."""
    from training.content.encoders import load_or_base

    config = cfg.encoder_dir / "config.json"
    key = f"{config.resolve()}:{config.stat().st_mtime_ns}" if config.is_file() else "base"
    with _lock:
        if _loaded.get("current", (None,))[0] != key:
            _loaded["current"] = (key, load_or_base(cfg.encoder_dir, cfg.seed))
        return _loaded["current"][1]


def _image(raw, item_id: int):
    """(PIL image, file suffix) of encoded image bytes, or NewItemError."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(raw, (bytes, bytearray)) or not raw:
        raise NewItemError(f"item {item_id}: image must be the non-empty bytes of a JPEG/PNG file")
    if len(raw) > MAX_IMAGE_BYTES:
        raise NewItemError(
            f"item {item_id}: image of {len(raw):,} bytes exceeds {MAX_IMAGE_BYTES:,}"
        )
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            opened.load()
            fmt = (opened.format or "img").lower()
            image = opened.convert("RGB")
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise NewItemError(f"item {item_id}: undecodable image ({err})") from err
    return image, {"jpeg": ".jpg"}.get(fmt, f".{fmt}")


def validate(cfg: Config, items: list[dict]) -> list[dict]:
    """Checked copies of `items` (category normalised by `schemas.category`: missing or "" -> "unknown";
    image decoded); NewItemError on the first bad one."""
    if not items:
        raise NewItemError("no items given")
    out, seen = [], set()
    for item in items:
        item_id = item.get("item_id")
        if isinstance(item_id, bool) or not isinstance(item_id, int) or not 0 <= item_id < 2**63:
            raise NewItemError(f"item_id must be a non-negative 64-bit integer, not {item_id!r}")
        if item_id in seen:
            raise NewItemError(f"item {item_id} given twice")
        seen.add(item_id)
        text, category = item.get("text"), item.get("category")
        if not isinstance(text, str) or not text.strip():
            raise NewItemError(f"item {item_id}: empty text")
        if len(text) > cfg.max_text_chars:
            raise NewItemError(
                f"item {item_id}: text of {len(text):,} chars exceeds {cfg.max_text_chars:,}"
            )
        if category is not None and (
            not isinstance(category, str) or len(category) > MAX_CATEGORY_CHARS
        ):
            raise NewItemError(
                f"item {item_id}: category must be a string of <= {MAX_CATEGORY_CHARS} chars"
            )
        raw = item.get("image")
        pil, suffix = _image(raw, item_id) if raw is not None else (None, None)
        out.append(
            {
                "item_id": item_id,
                "text": text,
                "category": schemas.category(category),
                "raw": raw,
                "pil": pil,
                "suffix": suffix,
            }
        )
    return out


def _cast(frame: pd.DataFrame, name: str, path: str) -> pa.Table:
    """Arrow table of `frame` as table `name` of mminterest/schemas.py, in the stored column order."""
    from mminterest import tables

    schema = schemas.schema(name)
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    if not tables.exists(path):
        return table
    stored = tables.schema(path)
    return table.select(stored.names).cast(stored)


class _Publication:
    """The writes of one call, undone in reverse order when a later one fails: no item is ever in
    `items` without its embedding and online entry, or the reverse."""

    def __init__(self, cfg: Config, ids: list[int]):
        from mminterest import tables

        self.cfg, self.ids = cfg, ids
        self.undo: list[Callable[[], None]] = []
        self.before = {
            name: tables.read(cfg.table(name), ids=ids) for name in ("items", "item_embeddings")
        }

    def merge(self, name: str, table: pa.Table, newer: str | None = None) -> None:
        from mminterest import tables

        path = self.cfg.table(name)
        tables.merge_arrow(
            table, path, ["item_id"], newer=newer, attempts=self.cfg.delta_commit_attempts
        )
        self.undo.append(lambda: self._restore(name))

    def _restore(self, name: str) -> None:
        """Put `name` back as it was for these ids: created rows deleted, updated rows restored."""
        from mminterest import tables

        path, before = self.cfg.table(name), self.before[name]
        tables.delete(
            path,
            "item_id",
            sorted(set(self.ids) - set(before["item_id"].astype(int))),
            self.cfg.delta_commit_attempts,
        )
        if len(before):
            tables.merge_arrow(
                pa.Table.from_pandas(before, preserve_index=False).cast(tables.schema(path)),
                path,
                ["item_id"],
                attempts=self.cfg.delta_commit_attempts,
            )

    def rollback(self) -> None:
        for undo in reversed(self.undo):
            try:
                undo()
            except Exception:  # keep undoing the rest; the caller reports the original failure
                log.exception("new items %s: could not undo a write", self.ids)


def add_items(cfg: Config, items: list[dict], *, encoder=None, store=None) -> list[dict]:
    """Embed `items` ({item_id, text, category|None, image: encoded JPEG/PNG bytes|None}) and publish
    them to Delta (items, item_embeddings) and the online store, all or nothing. Returns per item
    {item_id, encoder_version, has_img, status: created|updated}; raises NewItemError for bad input
    and `mminterest.tables.CommitConflict` when concurrent writers kept the commits from landing."""
    from feature_repo.store_config import open_store
    from training.content.item_rows import content_hash, embed_frame

    checked = validate(cfg, items)
    encoder = encoder or load_encoder(cfg)
    version = _versions.get(encoder) or _versions.setdefault(encoder, encoder.encoder_version())
    ids = [it["item_id"] for it in checked]
    publication = _Publication(cfg, ids)
    stored = publication.before["items"]
    known = {int(i): t for i, t in zip(stored.get("item_id", []), stored.get("first_seen_ts", []))}
    now = pd.Timestamp.now(tz="UTC").floor("us")
    image_dir = cfg.home / "images"
    paths: list[str | None] = []
    for it in checked:
        path = None
        if it["raw"] is not None:
            image_dir.mkdir(parents=True, exist_ok=True)
            path = str(image_dir / f"{it['item_id']}{it['suffix']}")
            Path(path).write_bytes(it["raw"])
        paths.append(path)
    first_seen = [known.get(i) if pd.notna(known.get(i)) else None for i in ids]
    frame = pd.DataFrame(
        {
            "item_id": ids,
            "title": [it["text"].splitlines()[0][:200] for it in checked],
            "text": [it["text"] for it in checked],
            "category": [it["category"] for it in checked],
            "image_path": paths,
            "first_seen_ts": pd.Series(first_seen, dtype="datetime64[us, UTC]"),
            "content_hash": [
                content_hash(version, it["text"], it["category"], it["raw"]) for it in checked
            ],
            "updated_ts": now,
        }
    )
    frame["valid_from_ts"] = frame["first_seen_ts"].fillna(now)
    rows = embed_frame(encoder, version, frame, [it["pil"] for it in checked], batch_size=64)
    rows["category"] = frame["category"].to_numpy()
    online = rows[ONLINE_COLUMNS].copy()
    online["img"] = [list(v) if v is not None else None for v in online["img"]]
    for name in ("txt", "fused"):
        online[name] = [list(v) for v in online[name]]
    try:
        publication.merge("items", _cast(frame, "items", cfg.table("items")))
        path = cfg.table("item_embeddings")
        publication.merge(
            "item_embeddings", _cast(rows, "item_embeddings", path), newer="updated_ts"
        )
        (store or open_store(cfg)).write_to_online_store("item_embeddings", online)
    except BaseException:
        publication.rollback()
        raise
    return [
        {
            "item_id": int(i),
            "encoder_version": version,
            "has_img": bool(h),
            "status": "updated" if i in known else "created",
        }
        for i, h in zip(ids, rows["has_img"])
    ]
