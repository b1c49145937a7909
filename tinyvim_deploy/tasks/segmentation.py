"""Semantic segmentation: the official test pipeline in, a label map at the image's size out, mIoU on a folder.

One function pair serves every segmentor and every backend, with the parameters read from the model's
spec (or an artifact's metadata):

1. :func:`plan_input` — mmseg's keep-ratio resize into ``test_scale`` (2048, 512), then
   ``resize_mode="pad"`` (CGRSeg: pad bottom/right to a multiple of 32) or ``"stretch"`` (TinyViM's
   ``AlignResize``, SSA's ``ResizeToMultiple``: resize again to the next multiple of 32). A
   fixed-size artifact (an engine built for 512×512) takes the image fitted inside its size, keeping
   the aspect ratio, padded bottom/right — the same rule with the box set by the artifact.
2. :func:`prepare` — OpenCV bilinear resizes on uint8 (mmcv's), normalisation, zero padding.
3. :func:`labels_from_logits` — logits -> bilinear to the network input -> crop the valid region
   -> bilinear to the original size -> argmax (interpolating logits, never labels).

Metrics (:class:`SegmentationMetrics`, mmseg's definitions) over ``DIR/images/**/NAME.(jpg|png|…)`` with
``DIR/annotations/**/NAME.png`` (ADE20K's layout; ``labels/`` is accepted for ``annotations/``), paired by
relative path without suffix. With ``reduce_zero_label`` (ADE20K) annotation value 0 ("other") is ignored
and value v is class v − 1; 255 is always ignored. Per class c: IoU = pixels predicted c and labelled c
over pixels predicted c or labelled c (NaN for a class in neither), mIoU = mean over non-NaN classes,
aAcc = correct pixels / labelled pixels — as mmseg's ``eval_metrics`` computes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tinyvim_deploy.errors import DatasetError
from tinyvim_deploy.export.checks import Check, label_map_check, map_agreement_miou, value_check
from tinyvim_deploy.images import IMAGE_SUFFIXES
from tinyvim_deploy.tasks.base import Task

if TYPE_CHECKING:
    from tinyvim_deploy.models.registry import ModelSpec

IGNORE_INDEX = 255


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
    """[K, h, w] logits -> [K, H0, W0] torch tensor at the original image size (steps 1–3 above)."""
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


@dataclasses.dataclass
class SegmentationMetrics:
    num_classes: int
    intersection: np.ndarray = None  # type: ignore[assignment]
    union: np.ndarray = None  # type: ignore[assignment]
    labelled: np.ndarray = None  # type: ignore[assignment]
    images: int = 0
    class_names: list[str] | None = None  # for the per-class report (index names when None)

    def __post_init__(self) -> None:
        for name in ("intersection", "union", "labelled"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.num_classes, np.int64))

    def update(self, prediction: np.ndarray, label: np.ndarray) -> None:
        """Add one image: ``prediction`` and ``label`` [H, W] class indices (label may hold IGNORE_INDEX)."""
        if prediction.shape != label.shape:
            raise DatasetError(f"prediction {prediction.shape} and label {label.shape} differ in size.")
        valid = label != IGNORE_INDEX
        pred, gt = prediction[valid].astype(np.int64), label[valid].astype(np.int64)
        if gt.size and gt.max() >= self.num_classes:
            raise DatasetError(f"a label value {int(gt.max())} is not below the {self.num_classes} classes "
                               "(is reduce_zero_label set right?).")
        k = self.num_classes
        inter = np.bincount(pred[pred == gt], minlength=k)[:k]
        area_pred = np.bincount(pred, minlength=k)[:k]
        area_gt = np.bincount(gt, minlength=k)[:k]
        self.intersection += inter
        self.union += area_pred + area_gt - inter
        self.labelled += area_gt
        self.images += 1

    @property
    def iou(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    @property
    def miou(self) -> float:
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def aacc(self) -> float:
        total = self.labelled.sum()
        return float(self.intersection.sum() / total) if total else float("nan")

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        class_names = class_names or self.class_names or [str(i) for i in range(self.num_classes)]
        return {"images": self.images, "mIoU": self.miou, "aAcc": self.aacc,
                "per_class_IoU": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, self.iou)}}


def read_label(path: Path, reduce_zero_label: bool) -> np.ndarray:
    """A label PNG as class indices ([H, W] int64) with IGNORE_INDEX where not labelled."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"{path} is a {image.mode} image, not a label map (one class index per pixel).")
            label = np.asarray(image, dtype=np.int64)
    except DatasetError:
        raise
    except Exception:
        raise DatasetError(f"Cannot read label map {path}.") from None
    if reduce_zero_label:  # ADE20K: 0 = "other" (ignored), v -> v - 1
        label = np.where(label == 0, IGNORE_INDEX, label - 1)
        label[label == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 stays ignored after the shift
    return label


def pair_images_and_labels(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, label PNG) pairs of an evaluation folder, sorted; a clear error for a folder that is not one."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Evaluation data folder not found: {root}")
    images_dir = root / "images"
    labels_dir = next((root / d for d in ("annotations", "labels") if (root / d).is_dir()), None)
    if not images_dir.is_dir() or labels_dir is None:
        raise DatasetError(f"{root} needs an images/ folder and an annotations/ (or labels/) folder of PNG label maps.")
    labels = {p.relative_to(labels_dir).with_suffix(""): p for p in labels_dir.rglob("*.png")}
    if not labels:
        raise DatasetError(f"{labels_dir} holds no .png label maps.")
    pairs, unpaired = [], []
    for image in sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        key = image.relative_to(images_dir).with_suffix("")
        (pairs.append((image, labels[key])) if key in labels else unpaired.append(image.name))
    if not pairs:
        raise DatasetError(f"No image in {images_dir} has a label map of the same name in {labels_dir}.")
    if unpaired:
        raise DatasetError(f"{len(unpaired)} images have no label map in {labels_dir} (first: {unpaired[0]}).")
    return pairs


def evaluate_segmentation(predictor, root: str | Path, reduce_zero_label: bool = True,
                          on_batch=None) -> SegmentationMetrics:
    """mIoU/aAcc of a segmentation Predictor (any backend) over an evaluation folder; ``on_batch(done, total)``."""
    pairs = pair_images_and_labels(root)
    metrics = SegmentationMetrics(predictor.spec.num_classes, class_names=list(predictor.class_names))
    for done, (image_path, label_path) in enumerate(pairs, start=1):
        label = read_label(label_path, reduce_zero_label)
        result = predictor.predict([predictor.decode(image_path)])[0]
        if result.labels.shape != label.shape:
            raise DatasetError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but {image_path} is "
                               f"{result.labels.shape[1]}x{result.labels.shape[0]}.")
        metrics.update(result.labels, label)
        if on_batch:
            on_batch(done, len(pairs))
    return metrics


class SegmentationTask(Task):
    name = "segmentation"
    any_input_size = True  # eager PyTorch takes the official pipeline's sizes unless a box is set
    can_output_labels = True
    saves_images = True
    # the prototype / SSA cosine tails and attention: precision-sensitive and tiny, so only the convs go INT8
    int8_float_ops = ("MatMul",)
    predict_options = frozenset({"probabilities", "slide", "stride"})

    def preprocess(self, images, spec, input_hw):
        prepared = [prepare(rgb, spec, input_hw) for rgb in images]
        return np.stack([x for x, _ in prepared]), [plan for _, plan in prepared]

    def batch_size(self, requested, count, fixed_size):
        # without a fixed box every image gets its own size (the official test mode): one per call
        return max(1, requested or count) if fixed_size else 1

    def describe_preprocessing(self, spec) -> str:
        return f"{spec.resize_mode} to {spec.size_multiple}, {spec.interpolation}"

    def postprocess(self, outputs, contexts, sources, predictor, probabilities: bool = False, **_):
        results = []
        for out, plan, source in zip(outputs[0], contexts, sources):
            if predictor.label_output:  # the graph did resize + argmax: crop, then nearest to the image
                labels, probs = labels_to_original(out[0] if out.ndim == 3 else out, plan), None
            else:
                if out.ndim != 3:
                    from tinyvim_deploy.errors import ArtifactError

                    raise ArtifactError(f"A segmentor returns [batch, classes, H, W] logits; this artifact returned "
                                        f"{outputs[0].shape}.")
                labels, probs = labels_from_logits(out, plan, probabilities)
            results.append(SegmentationResult(labels, predictor.class_names, predictor.palette, probs, source))
        return results

    def predict(self, predictor, decoded, batch_size=None, *, slide: bool = False, stride=None, **options):
        """``slide``: mmseg's sliding-window mode — the image goes through the official pipeline at full size
        and the artifact (its input size is the window) runs on overlapping windows, ``stride`` apart
        (default: 2/3 of the window, as mmseg's 512/341 configs)."""
        if not slide:
            return super().predict(predictor, decoded, batch_size, **options)
        window = tuple(predictor.backend.input_hw)
        step = stride or (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
        results = []
        for rgb, source in decoded:
            x, plan = prepare(rgb, predictor.spec, None)
            logits = slide_logits(lambda w: predictor.backend.run(w)[0], x, window, step)
            results += self.postprocess([logits[None]], [plan], [source], predictor, **options)
        return results

    def render(self, result, top):
        from tinyvim_deploy.reports import segmentation_table

        return segmentation_table(result, top)

    def save(self, result, rgb, folder) -> None:
        """``<stem>_overlay.png`` (the image blended with class colours) and ``<stem>_labels.png`` (class per pixel)."""
        from tinyvim_deploy.fileio import save_image

        stem = Path(result.source).stem
        save_image(Path(folder) / f"{stem}_overlay.png", result.overlay(rgb))
        save_image(Path(folder) / f"{stem}_labels.png", result.labels)

    def coreml_convert_options(self, ct, spec) -> dict:
        return {"outputs": [ct.TensorType(name="logits")]}

    def coreml_kind(self, spec) -> str:
        return f"semantic segmentation (logits at 1/{spec.output_stride}; resize, crop and argmax in the app)"

    def coreml_outputs(self, spec):
        from tinyvim_deploy.runtimes.base import TensorInfo

        return [TensorInfo("logits", (1, spec.num_classes, None, None), "float32")]

    def coreml_read(self, prediction, class_names):
        return np.asarray(prediction["logits"], np.float32)[0]

    def torch_outputs(self, spec):
        from tinyvim_deploy.runtimes.base import TensorInfo

        return [TensorInfo("logits", (None, spec.num_classes, "height", "width"), "float32")]

    def metadata_fields(self, spec) -> dict[str, str]:
        """The test pipeline of a segmentor, and its palette for overlays."""
        return {
            "test_scale": json.dumps(list(spec.test_scale) if spec.test_scale else None),
            "resize_mode": spec.resize_mode,
            "size_multiple": str(spec.size_multiple),
            "output_stride": str(spec.output_stride),
            "palette": json.dumps([list(c) for c in spec.palette]),
        }

    def compare(self, reference, candidate, name, atol, x) -> list[Check]:
        ref, got = reference[0], candidate[0]
        if np.issubdtype(ref.dtype, np.integer):  # label maps (--include-postprocess): pixels, not values
            return [label_map_check(ref, got, name)]
        if ref.ndim != 4:
            return [value_check(ref, got, name, atol)]
        ref_map, got_map = ref.argmax(1), got.argmax(1)
        return [value_check(ref, got, name, atol, float(np.mean(ref_map == got_map)),
                            map_agreement_miou(ref_map, got_map, ref.shape[1]))]

    def evaluate(self, predictor, data, *, on_batch=None, reduce_zero_label: bool = True, **options):
        return evaluate_segmentation(predictor, data, reduce_zero_label, on_batch)

    def render_metrics(self, metrics, title: str):
        from tinyvim_deploy.reports import eval_table

        return eval_table(metrics, metrics.class_names or [str(i) for i in range(metrics.num_classes)], title)

TASK = SegmentationTask()
