"""``Predictor``: one API for apps, whatever the artifact (a model name, an ONNX file, …) and the task.

The artifact's own spec drives preprocessing (size, crop_pct, interpolation, mean/std); the backend only
runs arrays; the task (:mod:`tinyvim_deploy.tasks`) turns images into inputs and outputs into results.
One input gives one result, a list gives a list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import ArtifactError, ImageError
from tinyvim_deploy.images import load_image, to_rgb
from tinyvim_deploy.tasks import get_task
from tinyvim_deploy.tasks.classification import ClassificationResult  # noqa: F401  (public: tv.ClassificationResult)


def _read_labels(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"Labels file not found: {p}")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


class Predictor:
    """Classify, segment or detect with an exported artifact or a registered model.

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
        self.task = get_task(self.spec.task)
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

    # -- what the task reads ---------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, str]:
        """The artifact's recorded metadata (empty for a model name)."""
        return getattr(self.backend, "metadata", None) or {}

    @property
    def input_box(self) -> tuple[int, int] | None:
        """The artifact's fixed input size, or None where it takes any (a segmentor in eager PyTorch)."""
        return None if self.backend.dynamic_hw else tuple(self.backend.input_hw)

    @property
    def label_output(self) -> bool:
        """A segmentor exported with ``--include-postprocess``: the graph outputs the label map itself."""
        return self.metadata.get("postprocess") == "resize+argmax"

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        from tinyvim_deploy.export.metadata import palette_from_metadata

        return palette_from_metadata(self.metadata) or list(self.spec.palette)

    # -- running -----------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray], fixed_size: bool = False) -> tuple[np.ndarray, list]:
        """RGB images -> (network input, per-image contexts). ``fixed_size``: use the artifact's default
        input size even where it takes any (so that a batch of different images stacks)."""
        box = self.input_box or (tuple(self.backend.input_hw) if fixed_size else None)
        return self.task.preprocess(images, self.spec, box)

    def postprocess(self, outputs: list[np.ndarray], contexts: list, sources: Sequence[str], **options) -> list:
        return self.task.postprocess(outputs, contexts, sources, self, **options)

    @staticmethod
    def decode(item, color: str = "rgb") -> tuple[np.ndarray, str]:
        """A path, an array or a PIL image -> (HxWx3 uint8 RGB, a name for it); raises ImageError naming the file."""
        if isinstance(item, (str, os.PathLike)):
            return load_image(item), str(item)
        if isinstance(item, np.ndarray):
            return to_rgb(item, color, "array"), "array"
        if hasattr(item, "convert") and hasattr(item, "mode"):  # a PIL image
            return np.asarray(item.convert("RGB")), getattr(item, "filename", "") or "PIL image"
        raise ImageError(f"Cannot read an image from a {type(item).__name__}: pass a path, an HxWx3 uint8 array "
                         "or a PIL image.")

    def predict(self, decoded: Sequence[tuple[np.ndarray, str]], batch_size: int | None = None, **options) -> list:
        """Results for decoded (RGB, name) pairs, ``batch_size`` images per inference call (all at once if None).

        Options are the task's: segmentation takes ``probabilities``, ``slide`` and ``stride``.
        """
        if batch_size is not None and batch_size < 1:
            raise ArtifactError(f"batch_size must be at least 1, got {batch_size}.")
        return self.task.predict(self, decoded, batch_size, **options)

    def __call__(self, images, *, color: str = "rgb", batch_size: int | None = None, **options):
        """A ClassificationResult, SegmentationResult or DetectionResult per image (one for one input, a list
        for a list)."""
        single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)) \
            or hasattr(images, "convert")
        items = [images] if single else list(images)
        results = self.predict([self.decode(item, color) for item in items], batch_size, **options)
        return results[0] if single else results

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
