"""Segmentation metrics (mmseg's definitions) over an image folder with label PNGs.

Layout: ``DIR/images/**/NAME.(jpg|png|…)`` with ``DIR/annotations/**/NAME.png`` (ADE20K's
``ADEChallengeData2016`` layout; ``labels/`` is accepted for ``annotations/``), paired by relative
path without suffix. With ``reduce_zero_label`` (ADE20K) annotation value 0 ("other") is ignored and
value v is class v − 1; 255 is always ignored.

Per class c: intersection = pixels predicted c that are labelled c, union = predicted c or labelled c.
IoU = intersection / union (NaN for a class in neither), mIoU = mean over non-NaN classes, aAcc =
correct pixels / labelled pixels — as mmseg's ``eval_metrics`` computes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import DatasetError
from tinyvim_deploy.images import IMAGE_SUFFIXES

IGNORE_INDEX = 255


@dataclasses.dataclass
class SegmentationMetrics:
    num_classes: int
    intersection: np.ndarray = None  # type: ignore[assignment]
    union: np.ndarray = None  # type: ignore[assignment]
    labelled: np.ndarray = None  # type: ignore[assignment]
    images: int = 0

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

    def as_dict(self, class_names) -> dict:
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
                          on_image=None) -> SegmentationMetrics:
    """mIoU/aAcc of a segmentation Predictor (any backend) over an evaluation folder."""
    metrics = SegmentationMetrics(predictor.spec.num_classes)
    for image_path, label_path in pair_images_and_labels(root):
        label = read_label(label_path, reduce_zero_label)
        result = predictor.segment([predictor.decode(image_path)])[0]
        if result.labels.shape != label.shape:
            raise DatasetError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but {image_path} is "
                               f"{result.labels.shape[1]}x{result.labels.shape[0]}.")
        metrics.update(result.labels, label)
        if on_image:
            on_image(image_path)
    return metrics
