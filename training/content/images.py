"""Image preprocessing with PIL + numpy: RGB, square resize, uint8 arrays; bad images -> None."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def load_image(source, size: int) -> np.ndarray | None:
    """(size, size, 3) uint8 array from a path, PIL image or HxWx3 array; None if missing or unreadable.

    The whole image is resized to a square (posters keep all their content, slightly squeezed).
    """
    if _is_missing(source):
        return None
    try:
        if isinstance(source, np.ndarray):
            if source.shape == (size, size, 3) and source.dtype == np.uint8:
                return source
            img = Image.fromarray(np.asarray(source, dtype=np.uint8))
        elif isinstance(source, Image.Image):
            img = source
        else:
            with Image.open(Path(source)) as opened:  # format sniffed from bytes, not the suffix
                opened.load()
                img = opened.convert("RGB")
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        log.debug("unreadable image %r: %s", source, err)
        return None


def to_unit_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack (H, W, 3) uint8 arrays into a (M, 3, H, W) float tensor in [0, 1]."""
    if not arrays:
        raise ValueError("no images to stack")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return batch.float().div_(255.0)
