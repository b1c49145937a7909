"""Detector input geometry: letterbox an image to a square input and map boxes back.

Written for the detection work of ``shared/specs/drkd.md`` §7 (the training data of §7.5 and the
Predictor use the same function, so that a model sees the same geometry in training and deployment).
The padding goes to the bottom and right only: the image keeps its top-left corner at (0, 0), so
un-letterboxing a box is a single division by the scale, with no offset to carry around.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LETTERBOX_FILL", "letterbox", "unletterbox_boxes"]

LETTERBOX_FILL = 114  # the grey YOLO/mmdet letterboxes use; only a convention, but train and predict must agree


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``rgb`` [H, W, C] keeping its aspect ratio so the long side is ``size``; pad to size×size.

    Returns ``(image, scale, (pad_x, pad_y))``. ``scale`` = size / max(H, W) (the resized side lengths
    are rounded, so the short side's own factor can differ from it by < 0.5 px / side); the pad is
    always (0, 0) because the filler goes to the bottom/right: a letterboxed box maps back as box / scale.
    """
    import cv2

    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"letterbox expects an H×W×C image, got shape {rgb.shape}")
    if size < 1:
        raise ValueError(f"letterbox size must be positive, got {size}")
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    new_w = min(size, max(1, int(round(w * scale))))
    new_h = min(size, max(1, int(round(h * scale))))
    resized = rgb if (new_h, new_w) == (h, w) else cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:  # cv2.resize drops a trailing channel axis of length 1
        resized = resized[:, :, None]
    out = np.full((size, size, rgb.shape[2]), LETTERBOX_FILL, dtype=rgb.dtype)
    out[:new_h, :new_w] = resized
    return out, scale, (0, 0)


def unletterbox_boxes(boxes: np.ndarray, scale: float, original_hw: Sequence[int]) -> np.ndarray:
    """Boxes [..., 4] x1y1x2y2 in letterboxed pixels -> original-image pixels, clipped to the image."""
    height, width = int(original_hw[0]), int(original_hw[1])
    out = np.asarray(boxes, dtype=np.float32) / np.float32(scale)
    # A box may reach into the padding (or past the rounded resized edge): clip it to the real image.
    out[..., 0::2] = np.clip(out[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, height)
    return out
