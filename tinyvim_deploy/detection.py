"""Detector input geometry: letterbox an image to a square input and map boxes back.

Written for the detection work of ``shared/specs/drkd.md`` §7 (the training data of §7.5 and the
Predictor use the same function, so that a model sees the same geometry in training and deployment).
The padding goes to the bottom and right only: the image keeps its top-left corner at (0, 0), so
un-letterboxing a box is a single division by the scale, with no offset to carry around.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["LETTERBOX_FILL", "DetectionResult", "draw_detections", "letterbox", "letterbox_batch", "unletterbox_boxes"]

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


def letterbox_batch(images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
                    ) -> tuple[np.ndarray, list[float]]:
    """RGB uint8 images -> (float32 NCHW batch normalised with mean/std, per-image scale): training and Predictor."""
    mean_ = np.asarray(mean, np.float32).reshape(1, 1, 3)
    std_ = np.asarray(std, np.float32).reshape(1, 1, 3)
    batch, scales = [], []
    for rgb in images:
        boxed, scale, _ = letterbox(np.asarray(rgb), size)
        batch.append(((boxed.astype(np.float32) / 255.0 - mean_) / std_).transpose(2, 0, 1))
        scales.append(scale)
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32), scales


def unletterbox_boxes(boxes: np.ndarray, scale: float, original_hw: Sequence[int]) -> np.ndarray:
    """Boxes [..., 4] x1y1x2y2 in letterboxed pixels -> original-image pixels, clipped to the image."""
    height, width = int(original_hw[0]), int(original_hw[1])
    out = np.asarray(boxes, dtype=np.float32) / np.float32(scale)
    # A box may reach into the padding (or past the rounded resized edge): clip it to the real image.
    out[..., 0::2] = np.clip(out[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, height)
    return out


@dataclasses.dataclass
class DetectionResult:
    """One image's detections, best first: boxes x1y1x2y2 in the original image's pixels."""

    boxes: np.ndarray  # [k, 4] float32
    scores: np.ndarray  # [k] float32
    class_ids: np.ndarray  # [k] int64
    labels: list[str]
    source: str = ""
    palette: Sequence[tuple[int, int, int]] = ()

    def __len__(self) -> int:
        return len(self.scores)

    def as_dict(self) -> dict:
        return {"source": self.source, "detections": [
            {"box": [round(float(v), 2) for v in box], "score": float(score), "class_id": int(c), "label": label}
            for box, score, c, label in zip(self.boxes, self.scores, self.class_ids, self.labels)]}

    def draw(self, rgb: np.ndarray) -> np.ndarray:
        """A copy of ``rgb`` with every box and its "label score" drawn (OpenCV)."""
        return draw_detections(rgb, self.boxes, self.scores, self.class_ids, self.labels, self.palette)


def draw_detections(rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    labels: Sequence[str], palette: Sequence[tuple[int, int, int]] = ()) -> np.ndarray:
    """Boxes with a filled caption above each (inside the image when the box touches the top edge)."""
    import cv2

    out = np.ascontiguousarray(rgb).copy()
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    font_scale = max(0.35, max(height, width) / 1400)
    for box, score, c, label in zip(boxes, scores, class_ids, labels):
        colour = tuple(int(v) for v in palette[int(c)]) if len(palette) > int(c) else (255, 64, 64)
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        caption = f"{label} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1
        cv2.rectangle(out, (x1, top), (min(width - 1, x1 + tw + 2), top + th + base + 2), colour, -1)
        text = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)  # readable on light and dark fills
        cv2.putText(out, caption, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text, 1, cv2.LINE_AA)
    return out
