"""COCO box AP with pycocotools, with the pitfalls of ``shared/specs/drkd.md`` §7.4 handled here once.

- GT annotation ids are renumbered from 1 in a copy (pycocotools stores a match with ann id 0 as 0, which
  reads as "unmatched"), and missing ``area`` (w·h) / ``iscrowd`` (0) are filled in;
- an empty detection list never reaches ``loadRes`` (it raises on one); an empty result set is built
  directly, so AP is 0 where there is ground truth and -1 where pycocotools has nothing to average;
- pycocotools' prints go to a buffer, not the caller's stdout;
- with ``image_size``, the small/medium/large area ranges are COCO's 32²/96² scaled by image_size/640
  (COCO images are ~640 px; an 8 px object in a 128 px image is "small" as a 40 px one is in COCO), and
  the ranges used are returned and shown in :meth:`CocoMetrics.table`.

pycocotools is optional (``pip install "tinyvim-deploy[coco]"``): imported when an evaluation runs, not with this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Sequence

import numpy as np

from tinyvim_deploy.errors import BackendUnavailableError, DatasetError

__all__ = ["COCO_REFERENCE_SIZE", "CocoMetrics", "area_ranges", "coco_evaluate", "detections_from_arrays"]

COCO_REFERENCE_SIZE = 640  # the image side COCO's 32²/96² area thresholds are meant for
_MAX_AREA = 1e5**2  # pycocotools' upper bound of "all" and "large"


def area_ranges(image_size: int | None = None) -> dict[str, tuple[float, float]]:
    """{"small", "medium", "large"} -> [lo, hi] areas: COCO's, or scaled to ``image_size``-pixel images."""
    s = 1.0 if image_size is None else image_size / COCO_REFERENCE_SIZE
    small, medium = (32 * s) ** 2, (96 * s) ** 2
    return {"small": (0.0, small), "medium": (small, medium), "large": (medium, _MAX_AREA)}


@dataclasses.dataclass(frozen=True)
class CocoMetrics:
    """COCO bbox AP (IoU .50:.95), AP50, AP75 and AP by area, at 100 detections per image.

    Values in [0, 1]; -1 where pycocotools has no ground truth to average over (e.g. no large objects).
    """

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    area_ranges: dict[str, tuple[float, float]]
    image_size: int | None = None
    images: int = 0  # images evaluated

    def as_dict(self) -> dict:
        return {**{name: getattr(self, name) for name in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")},
                "area_ranges": self.area_ranges}

    def table(self) -> list[str]:
        """Printable rows, the area ranges included (they differ from COCO's when image_size is set)."""
        scale = "COCO's" if self.image_size is None else f"COCO's ×{self.image_size}/{COCO_REFERENCE_SIZE}"

        def row(name: str, v: float) -> str:
            return f"{name:<22}{v:6.3f}" if v >= 0 else f"{name:<22}     -"  # -1: nothing to measure there

        small, medium = self.area_ranges["small"][1] ** 0.5, self.area_ranges["medium"][1] ** 0.5
        return [
            row("AP     IoU .50:.95", self.ap),
            row("AP50   IoU .50", self.ap50),
            row("AP75   IoU .75", self.ap75),
            row(f"AP_S   area < {small:.1f}²", self.ap_small),
            row(f"AP_M   area < {medium:.1f}²", self.ap_medium),
            row(f"AP_L   area ≥ {medium:.1f}²", self.ap_large),
            f"(area ranges: {scale})",
        ]


def detections_from_arrays(image_id: int, boxes_xyxy: np.ndarray, scores: np.ndarray,
                           classes: np.ndarray) -> list[dict]:
    """One image's detections (x1y1x2y2 boxes, scores, 0-based classes) -> COCO result dicts (category = class+1)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes")
    return [{"image_id": int(image_id), "category_id": int(c) + 1,
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
            for b, s, c in zip(boxes, scores, classes)]


def _clean_ground_truth(gt: dict) -> dict:
    """A copy of ``gt`` that pycocotools evaluates correctly (ann ids from 1, area and iscrowd present)."""
    try:
        annotations = []
        for i, ann in enumerate(gt.get("annotations", [])):
            ann = dict(ann, id=i + 1)
            if "area" not in ann:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            ann.setdefault("iscrowd", 0)
            annotations.append(ann)
        return {"images": list(gt["images"]), "annotations": annotations, "categories": list(gt["categories"]),
                "info": gt.get("info", {})}
    except (KeyError, TypeError, IndexError) as e:
        raise DatasetError(f"Not a COCO ground-truth dict: {type(e).__name__} {e}.") from None


def coco_evaluate(gt: dict, detections: Sequence[dict], image_size: int | None = None) -> CocoMetrics:
    """COCO bbox metrics of ``detections`` (result dicts: image_id, category_id, bbox xywh, score) against ``gt``.

    ``image_size``: the side of the (square) images, to rescale the area ranges; None keeps COCO's.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise BackendUnavailableError('COCO evaluation needs pycocotools: pip install "tinyvim-deploy[coco]"') from None

    ranges = area_ranges(image_size)
    gt = _clean_ground_truth(gt)
    image_ids = {int(im["id"]) for im in gt["images"]}
    unknown = {int(d["image_id"]) for d in detections} - image_ids
    if unknown:
        raise DatasetError(f"Detections refer to image ids not in the ground truth: {sorted(unknown)[:5]}.")

    quiet = io.StringIO()  # pycocotools prints progress and its summary on stdout
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if detections:
            # loadRes adds keys to the dicts it is given: pass copies.
            coco_dt = coco_gt.loadRes([dict(d, bbox=[float(v) for v in d["bbox"]]) for d in detections])
        else:  # loadRes raises on an empty list; an empty result set evaluates to AP 0 (-1 without GT)
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.areaRng = [[0.0, _MAX_AREA], list(ranges["small"]), list(ranges["medium"]),
                                    list(ranges["large"])]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:6]]
    return CocoMetrics(*stats, area_ranges=ranges, image_size=image_size, images=len(gt.get("images", [])))
