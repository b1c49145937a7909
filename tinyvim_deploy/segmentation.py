"""Semantic segmentation around any runtime: the test pipeline in, a label map at the image's size out.

One function pair serves every segmentor and every backend (cgrseg.md §9, efficientformerv2.md §13,
semantic_fpn.md §8), with the parameters read from the model's spec (or an artifact's metadata):

1. :func:`plan_input` — mmseg's keep-ratio resize into ``test_scale`` (2048, 512), then
   ``resize_mode="pad"`` (CGRSeg: pad bottom/right to a multiple of 32) or ``"stretch"`` (TinyViM's
   ``AlignResize``, SSA's ``ResizeToMultiple``: resize again to the next multiple of 32). A
   fixed-size artifact (an engine built for 512×512) takes the image fitted inside its size, keeping
   the aspect ratio, padded bottom/right — the same rule with the box set by the artifact.
2. :func:`prepare` — OpenCV bilinear resizes on uint8 (mmcv's), normalisation, zero padding.
3. :func:`labels_from_logits` — logits -> bilinear to the network input -> crop the valid region
   -> bilinear to the original size -> argmax (interpolating logits, never labels).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tinyvim_deploy.models.registry import ModelSpec


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """How one image maps into the network input (top-left aligned)."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]  # the valid (un-padded) region of the network input
    input_hw: tuple[int, int]  # the network input


def _round_up(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)


def keep_ratio_size(original_hw: tuple[int, int], spec: ModelSpec) -> tuple[int, int]:
    """mmcv's keep-ratio rescale into ``spec.test_scale`` = (long, short) edge limits."""
    h0, w0 = original_hw
    long, short = spec.test_scale or (max(h0, w0), min(h0, w0))
    scale = min(long / max(h0, w0), short / min(h0, w0))
    return int(h0 * scale + 0.5), int(w0 * scale + 0.5)


def plan_input(original_hw: tuple[int, int], spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> InputPlan:
    """Where the image goes: the official test pipeline, or fitted into a fixed ``input_hw``."""
    h0, w0 = original_hw
    if input_hw is not None:  # fixed-size artifact: fit inside, keep the aspect ratio, pad
        scale = min(input_hw[0] / h0, input_hw[1] / w0)
        h, w = min(input_hw[0], int(h0 * scale + 0.5)), min(input_hw[1], int(w0 * scale + 0.5))
        return InputPlan(original_hw, (max(1, h), max(1, w)), tuple(input_hw))
    h, w = keep_ratio_size(original_hw, spec)
    padded = (_round_up(h, spec.size_multiple), _round_up(w, spec.size_multiple))
    if spec.resize_mode == "stretch":  # the second resize: no padding, nothing to crop
        return InputPlan(original_hw, padded, padded)
    return InputPlan(original_hw, (h, w), padded)


def _resize_uint8(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    if rgb.shape[:2] == tuple(hw):
        return rgb
    return cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def prepare(rgb: np.ndarray, spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, InputPlan]:
    """HxWx3 uint8 RGB -> ([3, H, W] float32 network input, its plan)."""
    plan = plan_input(rgb.shape[:2], spec, input_hw)
    if spec.resize_mode == "stretch" and input_hw is None:  # keep-ratio resize first, then to the multiple
        first = keep_ratio_size(rgb.shape[:2], spec)
        resized = _resize_uint8(_resize_uint8(rgb, first), plan.resized_hw)
    else:
        resized = _resize_uint8(rgb, plan.resized_hw)
    mean = np.asarray(spec.mean, np.float64) * 255.0
    inv_std = 1.0 / (np.asarray(spec.std, np.float64) * 255.0)  # mmcv multiplies by the reciprocal
    normalised = ((resized.astype(np.float32) - mean) * inv_std).astype(np.float32)
    x = np.zeros((3, *plan.input_hw), np.float32)  # zero padding after normalisation (the mean colour)
    x[:, : plan.resized_hw[0], : plan.resized_hw[1]] = normalised.transpose(2, 0, 1)
    return x, plan


def slide_logits(run, x: np.ndarray, crop: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """mmseg's sliding-window inference over one [3, H, W] input: windows of ``crop`` every ``stride``.

    Each window's logits are resized to the window (bilinear) and summed into place; overlaps are
    averaged. A window smaller than ``crop`` (an input smaller than it) is zero-padded to ``crop`` for
    fixed-size artifacts and its logits cropped back. ``run`` maps [1, 3, h, w] -> [1, K, h', w'].
    """
    import torch
    import torch.nn.functional as F

    _, height, width = x.shape
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    total = count = None
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, height), min(c * sw + cw, width)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            window = np.zeros((1, 3, ch, cw), np.float32)
            window[0, :, : y2 - y1, : x2 - x1] = x[:, y1:y2, x1:x2]
            logits = torch.from_numpy(np.ascontiguousarray(run(window), dtype=np.float32))
            logits = F.interpolate(logits, size=(ch, cw), mode="bilinear", align_corners=False)[0]
            if total is None:
                total = torch.zeros((logits.shape[0], height, width))
                count = torch.zeros((1, height, width))
            total[:, y1:y2, x1:x2] += logits[:, : y2 - y1, : x2 - x1]
            count[:, y1:y2, x1:x2] += 1
    return (total / count).numpy()


def logits_to_original(logits: np.ndarray, plan: InputPlan):
    """[K, h, w] logits -> [K, H0, W0] torch tensor at the original image size (steps 1–3 of §9)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
    if tuple(t.shape[2:]) != plan.input_hw:
        t = F.interpolate(t, size=plan.input_hw, mode="bilinear", align_corners=False)
    t = t[:, :, : plan.resized_hw[0], : plan.resized_hw[1]]
    if tuple(t.shape[2:]) != plan.original_hw:
        t = F.interpolate(t, size=plan.original_hw, mode="bilinear", align_corners=False)
    return t[0]


def labels_to_original(labels: np.ndarray, plan: InputPlan) -> np.ndarray:
    """A label map at the network input size (``--include-postprocess`` graphs) -> the original size (nearest)."""
    import cv2

    valid = np.ascontiguousarray(labels[: plan.resized_hw[0], : plan.resized_hw[1]])
    if valid.shape != plan.original_hw:
        valid = cv2.resize(valid.astype(np.int32), plan.original_hw[::-1], interpolation=cv2.INTER_NEAREST)
    return valid.astype(np.uint8 if valid.max(initial=0) <= 255 else np.int32)


def labels_from_logits(logits: np.ndarray, plan: InputPlan, probabilities: bool = False
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """(label map [H0, W0] uint8 (int32 above 255 classes), optional softmax probabilities [K, H0, W0])."""
    import torch

    full = logits_to_original(logits, plan)
    labels = full.argmax(0).numpy()
    labels = labels.astype(np.uint8 if full.shape[0] <= 255 else np.int32)
    probs = torch.softmax(full, dim=0).numpy() if probabilities else None
    return labels, probs


@dataclasses.dataclass
class SegmentationResult:
    labels: np.ndarray  # [H, W] class index per pixel, at the original image size
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    probabilities: np.ndarray | None = None  # [K, H, W] when asked for
    source: str = ""

    def areas(self, top: int | None = None) -> list[tuple[int, str, float]]:
        """(class, name, fraction of the image) by decreasing area."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]
        total = self.labels.size
        return [(i, self.class_names[i], counts[i] / total) for i in order[:top]]

    def color_mask(self) -> np.ndarray:
        """[H, W, 3] uint8: each pixel in its class colour."""
        return np.asarray(self.palette, np.uint8)[self.labels]

    def overlay(self, image: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The image (HxWx3 uint8 RGB, original size) blended with the class colours."""
        if image.shape[:2] != self.labels.shape:
            raise ValueError(f"image is {image.shape[:2]}, the label map {self.labels.shape}: pass the original image.")
        blended = (1 - alpha) * image.astype(np.float32) + alpha * self.color_mask().astype(np.float32)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def as_dict(self, top: int = 5) -> dict:
        return {"source": self.source, "shape": list(self.labels.shape),
                "classes": [{"index": i, "label": n, "area": round(a, 6)} for i, n, a in self.areas(top)]}
