"""``Predictor``: one API for apps, whatever the artifact (a model name, an ONNX file, …).

The artifact's own spec drives preprocessing (size, crop_pct, interpolation, mean/std); the
backend only runs arrays. One input gives one result, a list gives a list.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import ArtifactError, ImageError
from tinyvim_deploy.images import load_image, to_rgb
from tinyvim_deploy.preprocess import preprocess


@dataclasses.dataclass(repr=False)
class ClassificationResult:
    indices: list[int]  # top-k class indices, best first
    labels: list[str]
    scores: list[float]  # softmax probabilities
    logits: np.ndarray  # all classes
    source: str = ""

    def as_dict(self) -> dict:
        return {"source": self.source, "indices": self.indices, "labels": self.labels, "scores": self.scores}

    def __repr__(self) -> str:  # the top few classes, not every logit
        top = ", ".join(f"{label!r}: {score:.3f}" for label, score in zip(self.labels[:3], self.scores[:3]))
        more = f", … {len(self.labels) - 3} more" if len(self.labels) > 3 else ""
        return f"ClassificationResult({self.source!r}, top-{len(self.labels)}: {{{top}{more}}})"


def _read_labels(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"Labels file not found: {p}")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


class Predictor:
    """Classify images with an exported artifact or a registered model.

    >>> p = Predictor("tinyvim-s_224x224.onnx")          # backend chosen from the file type
    >>> p("cat.jpg").labels[0]
    """

    def __init__(self, artifact, *, backend: str | None = None, device: str | None = None,
                 threads: int | None = None, weights=None, labels=None, topk: int = 5,
                 score_threshold: float | None = None, **backend_options):
        """``backend_options`` go to the backend (torch: ``input_size``, ``compile``, ``fp16``, ``cuda_graph``).

        Detectors: ``score_threshold`` keeps detections scoring at least this (default: all the artifact's NMS
        returns, which keeps scores above its own threshold, 0.05 unless exported otherwise).
        """
        from tinyvim_deploy.runtimes import load_backend

        if topk < 1:
            raise ArtifactError(f"topk must be at least 1, got {topk}.")
        if score_threshold is not None and not 0 <= score_threshold <= 1:
            raise ArtifactError(f"score_threshold must be in [0, 1], got {score_threshold}.")
        if weights is not None:
            backend_options["weights"] = weights
        self.backend = load_backend(artifact, backend, device=device, threads=threads, **backend_options)
        self.spec = self.backend.spec
        if self.spec.task not in ("classification", "segmentation", "detection"):
            raise ArtifactError(f"{self.spec.name} is a {self.spec.task} model: the Predictor does not run "
                                f"{self.spec.task}.")
        self.score_threshold = score_threshold
        n = self.spec.num_classes
        if labels is not None:
            names = _read_labels(labels) if isinstance(labels, (str, os.PathLike)) else list(labels)
            if len(names) != n:
                raise ArtifactError(f"The labels ({labels if isinstance(labels, (str, os.PathLike)) else 'list'}) "
                                    f"have {len(names)} names but the model has {n} classes.")
        else:
            names = list(self.backend.class_names)
            if len(names) != n:  # e.g. a fine-tuned head with no names recorded: index labels
                names = [str(i) for i in range(n)]
        self.class_names = names
        self.topk = topk

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        s = self.spec
        if s.task == "detection":
            from tinyvim_deploy.detection import letterbox_batch

            return letterbox_batch(images, self.backend.input_hw[0], s.mean, s.std)[0]
        return preprocess(images, self.backend.input_hw, crop_pct=s.crop_pct, interpolation=s.interpolation,
                          mean=s.mean, std=s.std)

    @staticmethod
    def decode(item, color: str = "rgb") -> tuple[np.ndarray, str]:
        """A path or an array -> (HxWx3 uint8 RGB, a name for it); raises ImageError naming the file."""
        if isinstance(item, (str, os.PathLike)):
            return load_image(item), str(item)
        if isinstance(item, np.ndarray):
            return to_rgb(item, color, "array"), "array"
        raise ImageError(f"Cannot read an image from a {type(item).__name__}: pass a path or an HxWx3 uint8 array.")

    def postprocess(self, logits: np.ndarray, sources: Sequence[str]) -> list[ClassificationResult]:
        k = min(self.topk, logits.shape[1])
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        results = []
        for row, p, src in zip(logits, probs, sources):
            top = np.argsort(-row, kind="stable")[:k]
            results.append(ClassificationResult([int(i) for i in top], [self.class_names[i] for i in top],
                                                [float(p[i]) for i in top], row, src))
        return results

    @property
    def task(self) -> str:
        return self.spec.task

    def __call__(self, images, *, color: str = "rgb", probabilities: bool = False):
        """A ClassificationResult or SegmentationResult per image (one for one input, a list for a list)."""
        single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if single else list(images)
        decoded = [self.decode(item, color) for item in items]
        if self.task == "segmentation":
            results = self.segment(decoded, probabilities)
        elif self.task == "detection":
            results = self.detect(decoded)
        else:
            results = self.classify(decoded)
        return results[0] if single else results

    def detect(self, decoded: Sequence[tuple[np.ndarray, str]], batch_size: int | None = None) -> list:
        """DetectionResults (boxes in each image's own pixels) for decoded (RGB, name) pairs.

        The image is letterboxed into the artifact's square input (as in training); the artifact's outputs are
        either the fixed-K contract ``num_dets, boxes, scores, classes`` (an export with NMS) or the raw
        ``boxes, scores`` (PyTorch, or an export without NMS), to which the reference NMS is applied.
        """
        from tinyvim_deploy.detection import DetectionResult, letterbox_batch, unletterbox_boxes

        size = self.backend.input_hw[0]
        step = batch_size or max(1, len(decoded))
        palette = list(self.spec.palette)
        results = []
        for start in range(0, len(decoded), step):
            chunk = decoded[start : start + step]
            x, scales = letterbox_batch([rgb for rgb, _ in chunk], size, self.spec.mean, self.spec.std)
            num_dets, boxes, scores, classes = self.detections_from_outputs(self.backend.run(x))
            for j, (rgb, source) in enumerate(chunk):
                k = int(num_dets[j, 0])
                keep = np.arange(k) if self.score_threshold is None else np.flatnonzero(
                    scores[j, :k] >= self.score_threshold)
                ids = classes[j, keep].astype(np.int64)
                results.append(DetectionResult(
                    unletterbox_boxes(boxes[j, keep], scales[j], rgb.shape[:2]), scores[j, keep].astype(np.float32),
                    ids, [self.class_names[i] for i in ids], source, palette))
        return results

    def detections_from_outputs(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        if len(outputs) == 4:  # exported with NMS: already the contract
            return tuple(outputs)
        import torch

        from tinyvim_deploy.export.nms import NMSConfig
        from tinyvim_deploy.models.detection import multiclass_nms

        settings = NMSConfig.from_metadata(getattr(self.backend, "metadata", None) or {})
        dets = multiclass_nms(torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]), **settings.as_kwargs())
        return tuple(t.numpy() for t in dets)

    def segment(self, decoded: Sequence[tuple[np.ndarray, str]], probabilities: bool = False,
                slide: bool = False, stride: tuple[int, int] | None = None) -> list:
        """SegmentationResults (label maps at each image's own size) for decoded (RGB, name) pairs.

        ``slide``: mmseg's sliding-window mode — the image goes through the official pipeline at full
        size and the artifact (its input size is the window) runs on overlapping windows, ``stride``
        apart (default: 2/3 of the window, as mmseg's 512/341 configs).
        """
        from tinyvim_deploy.segmentation import (
            SegmentationResult,
            labels_from_logits,
            labels_to_original,
            prepare,
            slide_logits,
        )

        box = None if self.backend.dynamic_hw or slide else self.backend.input_hw
        window = tuple(self.backend.input_hw)
        step = stride or (max(1, window[0] * 2 // 3), max(1, window[1] * 2 // 3))
        results = []
        for rgb, source in decoded:  # one image per call: sizes differ (the official test mode)
            x, plan = prepare(rgb, self.spec, box)
            if self._label_output:  # the graph did resize + argmax: crop, then nearest to the image
                labels, probs = labels_to_original(self.backend.run(x[None])[0][0], plan), None
                results.append(SegmentationResult(labels, self.class_names, self.palette, probs, source))
                continue
            if slide:
                logits = slide_logits(lambda w: self.backend.run(w)[0], x, window, step)
            else:
                logits = self.backend.run(x[None])[0][0]
            labels, probs = labels_from_logits(logits, plan, probabilities)
            results.append(SegmentationResult(labels, self.class_names, self.palette, probs, source))
        return results

    @property
    def _label_output(self) -> bool:
        return (getattr(self.backend, "metadata", None) or {}).get("postprocess") == "resize+argmax"

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        from tinyvim_deploy.export.metadata import palette_from_metadata

        recorded = palette_from_metadata(getattr(self.backend, "metadata", None) or {})
        return recorded or list(self.spec.palette)

    def classify(self, decoded: Sequence[tuple[np.ndarray, str]], batch_size: int | None = None
                 ) -> list[ClassificationResult]:
        """Results for decoded (RGB, name) pairs, ``batch_size`` images per inference call (all at once if None)."""
        step = batch_size or max(1, len(decoded))
        results: list[ClassificationResult] = []
        for start in range(0, len(decoded), step):
            chunk = decoded[start : start + step]
            logits = self.backend.run(self.preprocess([rgb for rgb, _ in chunk]))[0]
            results.extend(self.postprocess(logits, [src for _, src in chunk]))
        return results

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
