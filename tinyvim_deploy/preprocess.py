"""The model's own preprocessing, exactly as the official evaluation does it (spec §9).

Resize the shorter side to ``int(size / crop_pct)`` with PIL's bicubic filter (torchvision's
``Resize`` on a PIL image), centre-crop with torchvision's rounding, scale to [0, 1], normalise.
All parameters come from the :class:`~tinyvim_deploy.models.registry.ModelSpec` (or an artifact's
metadata), never from constants here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_PIL_FILTERS = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1, "box": 4, "hamming": 5}


def resize_short_side(rgb: np.ndarray, short: int, interpolation: str = "bicubic") -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if h <= w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    if (new_h, new_w) == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((new_w, new_h), _PIL_FILTERS[interpolation]))


def center_crop(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h < height or w < width:  # torchvision pads with zeros in this case
        padded = np.zeros((max(h, height), max(w, width), 3), dtype=rgb.dtype)
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top : top + h, left : left + w] = rgb
        rgb, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return rgb[top : top + height, left : left + width]


def preprocess(
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    *,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> np.ndarray:
    """HxWx3 uint8 RGB images -> float32 NCHW batch ready for the model."""
    height, width = size
    short = int(max(height, width) / crop_pct)
    mean_ = np.asarray(mean, np.float32).reshape(1, 1, 3)
    std_ = np.asarray(std, np.float32).reshape(1, 1, 3)
    batch = []
    for rgb in images:
        crop = center_crop(resize_short_side(np.ascontiguousarray(rgb), short, interpolation), height, width)
        batch.append(((crop.astype(np.float32) / 255.0 - mean_) / std_).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32)


def to_pixels(batch: np.ndarray, mean, std) -> np.ndarray:
    """Undo :func:`preprocess`'s normalisation: NCHW float -> NHWC uint8 RGB (exact for crops of uint8 images)."""
    rgb = batch.transpose(0, 2, 3, 1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
