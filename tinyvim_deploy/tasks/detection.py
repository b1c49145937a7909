"""Object detection: letterbox in, boxes in the image's own pixels out, COCO AP on a data set.

The image is letterboxed into the artifact's square input (as in training, so a model sees the same
geometry in training and deployment). The padding goes to the bottom and right only: the image keeps its
top-left corner at (0, 0), so un-letterboxing a box is a single division by the scale. An artifact's
outputs are either the fixed-K contract ``num_dets, boxes, scores, classes`` (exported with NMS) or the raw
``boxes, scores`` (PyTorch, or an export without NMS), to which the reference NMS
(:mod:`tinyvim_deploy.tasks.nms`) is applied with the settings the artifact recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tinyvim_deploy.export.checks import Check
from tinyvim_deploy.tasks.base import Task

__all__ = ["LETTERBOX_FILL", "DetectionResult", "DetectionTask", "draw_detections", "letterbox", "letterbox_batch",
           "unletterbox_boxes"]

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


def detections_from_outputs(outputs: Sequence[np.ndarray], metadata: dict | None = None) -> tuple[np.ndarray, ...]:
    """(num_dets, boxes, scores, classes): an artifact's four NMS outputs as they are, or the reference NMS on
    raw (boxes, scores) with the NMS settings ``metadata`` recorded (the defaults without)."""
    if len(outputs) == 4:  # exported with NMS: already the contract
        return tuple(np.asarray(o) for o in outputs)
    import torch

    from tinyvim_deploy.export.nms import NMSConfig
    from tinyvim_deploy.tasks.nms import multiclass_nms

    settings = NMSConfig.from_metadata(metadata or {})
    dets = multiclass_nms(torch.as_tensor(np.asarray(outputs[0])), torch.as_tensor(np.asarray(outputs[1])),
                          **settings.as_kwargs())
    return tuple(t.numpy() for t in dets)


class DetectionTask(Task):
    name = "detection"
    has_nms = True
    trainable = True
    saves_images = True

    def preprocess(self, images, spec, input_hw):
        size = (input_hw or tuple(spec.input_size[1:]))[0]
        batch, scales = letterbox_batch(images, size, spec.mean, spec.std)
        return batch, [(scale, np.asarray(rgb).shape[:2]) for scale, rgb in zip(scales, images)]

    def describe_preprocessing(self, spec) -> str:
        return f"letterbox, {spec.interpolation}"

    def postprocess(self, outputs, contexts, sources, predictor, **_):
        if len(outputs) not in (2, 4):
            from tinyvim_deploy.errors import ArtifactError

            raise ArtifactError(f"A detector returns (boxes, scores) or (num_dets, boxes, scores, classes); this "
                                f"artifact returned {len(outputs)} outputs.")
        num_dets, boxes, scores, classes = detections_from_outputs(outputs, predictor.metadata)
        threshold = predictor.score_threshold
        palette = list(predictor.spec.palette)
        results = []
        for j, ((scale, original_hw), source) in enumerate(zip(contexts, sources)):
            k = int(num_dets[j, 0])
            keep = np.arange(k) if threshold is None else np.flatnonzero(scores[j, :k] >= threshold)
            ids = classes[j, keep].astype(np.int64)
            results.append(DetectionResult(unletterbox_boxes(boxes[j, keep], scale, original_hw),
                                           scores[j, keep].astype(np.float32), ids,
                                           [predictor.class_names[i] for i in ids], source, palette))
        return results

    def render(self, result, top):
        from tinyvim_deploy.reports import detection_table

        return detection_table(result)

    def save(self, result, rgb, folder) -> None:
        """``<stem>_boxes.jpg``: the image with every box and its label drawn."""
        from pathlib import Path

        from tinyvim_deploy.fileio import save_image

        save_image(Path(folder) / f"{Path(result.source).stem}_boxes.jpg", result.draw(rgb))

    def coreml_convert_options(self, ct, spec) -> dict:
        # Core ML's NMS takes float32 (or double) inputs, not an FP16 program's default
        return {"outputs": [ct.TensorType(name="confidence", dtype=np.float32),
                            ct.TensorType(name="coordinates", dtype=np.float32)]}

    def coreml_kind(self, spec) -> str:
        return "object detector (letterboxed input; Core ML NMS pipeline, boxes normalised cx,cy,w,h)"

    def torch_outputs(self, spec):
        from tinyvim_deploy.runtimes.base import TensorInfo

        # raw decoded outputs; the Predictor applies the reference NMS
        return [TensorInfo("boxes", (None, "points", 4), "float32"),
                TensorInfo("scores", (None, "points", spec.num_classes), "float32")]

    def compare(self, reference, candidate, name, atol, x) -> list[Check]:
        """The raw outputs: boxes in units of the input side (a 320 px coordinate differs by ~1e-5 px between
        float32 runtimes, so pixels would test float resolution, not parity), scores as they are."""
        return raw_detection_checks(name, x, reference[0], reference[1], candidate[0], candidate[1], atol)

    def parity(self, reference, candidate) -> tuple[float, bool]:
        """(max abs diff of the ranked post-NMS scores, all of the reference's detections found: same class,
        IoU ≥ 0.9). Ranked scores, not per-slot boxes: near-tied candidates may swap places between runtimes."""
        from tinyvim_deploy.tasks.nms import Detections

        ref, got = Detections(*detections_from_outputs(reference)), Detections(*detections_from_outputs(candidate))
        return float(np.abs(ref.scores - got.scores).max()), matched_fraction(ref, got) == 1.0

    def evaluate(self, predictor, data, *, on_batch=None, batch_size: int = 8, images: int = 200, data_seed: int = 0,
                 **options):
        """COCO AP through the Predictor (letterbox, runtime, NMS, un-letterbox) on a COCO folder (json + images),
        ``synthetic:shapesdet`` (``images`` test images of seed ``data_seed``) or a loaded DetectionData."""
        if isinstance(data, str):
            from tinyvim_deploy.training.shapesdet import load_detection_data

            data = load_detection_data(data, "test", images, predictor.backend.input_hw[0], data_seed)
        found = []
        for start in range(0, len(data), batch_size):
            stop = min(len(data), start + batch_size)
            chunk = [(np.asarray(data.images[i]), data.file_name(i)) for i in range(start, stop)]
            found += [(d.boxes, d.scores, d.class_ids) for d in self.predict(predictor, chunk)]
            if on_batch:
                on_batch(min(len(data), start + batch_size), len(data))
        return coco_metrics(data, found)


def coco_metrics(data, detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """COCO AP (pycocotools) of per-image (boxes x1y1x2y2 in image pixels, scores, class ids) on a DetectionData.

    The one COCO evaluation of the toolkit: ``tvdeploy eval`` and training's evaluation both end here.
    Area ranges are COCO's, scaled to the images' side when they all share one (the synthetic sets).
    """
    from tinyvim_deploy.coco_eval import coco_evaluate, detections_from_arrays

    results = []
    for i, (boxes, scores, class_ids) in enumerate(detections):
        results += detections_from_arrays(i + 1, boxes, scores, class_ids)
    sides = {max(np.asarray(image).shape[:2]) for image in data.images}
    return coco_evaluate(data.to_coco(), results, image_size=sides.pop() if len(sides) == 1 else None)


def raw_detection_checks(name: str, x: np.ndarray, ref_boxes: np.ndarray, ref_scores: np.ndarray,
                         boxes: np.ndarray, scores: np.ndarray, atol: float) -> list[Check]:
    """A detector's raw outputs against the reference: boxes in units of the input side, scores as they are."""
    side = float(max(x.shape[-2:]))
    box_diff = np.abs(ref_boxes.astype(np.float64) - boxes) / side
    score_diff = np.abs(ref_scores.astype(np.float64) - scores)
    checks = []
    for what, diff, got in (("boxes / side", box_diff, boxes), ("scores", score_diff, scores)):
        ok = bool(np.isfinite(got).all() and diff.max() <= atol)
        checks.append(Check(f"{name}: {what}", float(diff.max()), float(diff.mean()), None, ok))
    return checks


def matched_fraction(ref, got, iou: float = 0.9) -> float:
    """Share of the reference's detections that the candidate has too (same class, box IoU ≥ ``iou``)."""
    import torch

    from tinyvim_deploy.tasks.nms import box_iou

    total = matched = 0
    for b in range(ref.num_dets.shape[0]):
        k_ref, k_got = int(ref.num_dets[b, 0]), int(got.num_dets[b, 0])
        total += k_ref
        if k_ref == 0 or k_got == 0:
            continue
        overlap = box_iou(torch.as_tensor(ref.boxes[b, :k_ref]), torch.as_tensor(got.boxes[b, :k_got]))
        same = torch.as_tensor(ref.classes[b, :k_ref])[:, None] == torch.as_tensor(got.classes[b, :k_got])[None]
        matched += int(((overlap >= iou) & same).any(dim=1).sum())
    return matched / total if total else 1.0


TASK = DetectionTask()
