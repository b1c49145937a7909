"""Calibration data: images from a folder, a list file or arrays, preprocessed like the Predictor.

Sources:
- a folder, searched recursively; ImageNet-style class subfolders (``root/<class>/<image>``) give
  labels (class index = position of the folder name in sorted order, as torchvision's ImageFolder);
- a list file (``.txt``), one image path per line, optionally followed by an integer label;
- NumPy arrays: ``N×H×W×3`` uint8 RGB images (preprocessed here) or an ``N×3×H×W`` float32 batch
  that is already preprocessed.

Corrupt or non-image files are skipped with a warning; a missing or empty source is a
:class:`CalibrationError`; fewer images than recommended is a warning that gives the number.
The same :func:`~tinyvim_deploy.preprocess.preprocess` as the Predictor is used, driven by the
model's spec, so calibration sees exactly what inference will see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import CalibrationError, ImageError
from tinyvim_deploy.images import IMAGE_SUFFIXES, load_image
from tinyvim_deploy.models.registry import ModelSpec

RECOMMENDED_SAMPLES = 100  # below this, ranges (especially histograms) get noisy: warn


@dataclasses.dataclass
class CalibrationSet:
    """Preprocessed images (N×3×H×W float32), their labels when known, and where they came from."""

    tensors: np.ndarray
    labels: np.ndarray | None = None  # int64 class indices, or None
    sources: list[str] = dataclasses.field(default_factory=list)
    class_names: list[str] | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)  # files that could not be read

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def sha256(self) -> str:
        """Content hash of the preprocessed tensors (and labels): the calibration set's identity."""
        h = hashlib.sha256(np.ascontiguousarray(self.tensors, np.float32).tobytes())
        h.update(str(self.tensors.shape).encode())
        if self.labels is not None:
            h.update(np.asarray(self.labels, np.int64).tobytes())
        return h.hexdigest()

    def subset(self, index: Sequence[int] | slice) -> CalibrationSet:
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, int)
        return CalibrationSet(self.tensors[idx], None if self.labels is None else self.labels[idx],
                              [self.sources[i] for i in idx] if self.sources else [], self.class_names)


def _list_source(source: Path) -> tuple[list[Path], list[int] | None]:
    """Paths (and labels when every line has one) from a list file; relative paths are from its folder."""
    paths, labels = [], []
    for line in source.read_text(encoding="utf-8").splitlines():
        parts = line.strip().rsplit(maxsplit=1)
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            path, label = parts[0], int(parts[1])
        else:
            path, label = line.strip(), None
        paths.append(Path(path) if Path(path).is_absolute() else source.parent / path)
        labels.append(label)
    return paths, (labels if labels and all(label is not None for label in labels) else None)


def _folder_source(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes and all(f.parent != root for f in files):  # ImageFolder layout
        index = {name: i for i, name in enumerate(classes)}
        return files, [index[f.relative_to(root).parts[0]] for f in files], classes
    return files, None, None


def list_images(source: str | os.PathLike) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """The image files a source names, with labels and class names when it has them."""
    source = Path(source)
    if not source.exists():
        raise CalibrationError(f"Calibration data not found: {source}")
    if source.is_dir():
        files, labels, classes = _folder_source(source)
    elif source.suffix.lower() in (".txt", ".lst", ".list"):
        (files, labels), classes = _list_source(source), None
    else:
        raise CalibrationError(f"{source} is neither a folder of images nor a list file (.txt).")
    if not files:
        raise CalibrationError(f"No image files found in {source}.")
    return files, labels, classes


def load_calibration_set(
    source,
    spec: ModelSpec,
    input_hw: tuple[int, int] | None = None,
    *,
    samples: int | None = 256,
    seed: int = 0,
    skip: int = 0,
    progress: Callable[[int, int], None] | None = None,
    quiet: bool = False,
) -> CalibrationSet:
    """Read up to ``samples`` images from ``source`` in a seeded shuffled order, after the first ``skip``.

    ``skip`` lets a held-out set follow the calibration set from the same shuffled source.
    """
    hw = input_hw or tuple(spec.input_size[1:])
    if samples is not None and samples < 1:
        raise CalibrationError(f"The number of calibration samples must be at least 1, got {samples}.")
    if isinstance(source, np.ndarray):
        return _array_set(source, spec, hw, samples, seed, skip, quiet)
    files, labels, classes = list_images(source)
    order = np.random.default_rng(seed).permutation(len(files))[skip:]
    tensors, kept_labels, sources, skipped = [], [], [], []
    for i in order:
        if samples is not None and len(tensors) >= samples:
            break
        try:
            rgb = load_image(files[i])
        except ImageError as e:
            if not quiet:
                warnings.warn(f"skipped: {e}", stacklevel=2)
            skipped.append(str(files[i]))
            continue
        tensors.append(_prep([rgb], spec, hw)[0])
        sources.append(str(files[i]))
        if labels is not None:
            kept_labels.append(labels[i])
        if progress:
            progress(len(tensors), min(samples or len(order), len(order)))
    if not tensors:
        raise CalibrationError(f"No readable images in {source} (after the first {skip})." if skip else
                               f"No readable images in {source}.")
    if not quiet:
        _warn_if_few(len(tensors), samples)
    return CalibrationSet(np.stack(tensors), np.asarray(kept_labels, np.int64) if labels is not None else None,
                          sources, classes, skipped)


def _prep(images, spec: ModelSpec, hw) -> np.ndarray:
    """The artifact's task's preprocessing, fitted into the artifact's size."""
    from tinyvim_deploy.tasks import get_task

    return get_task(spec.task).preprocess(images, spec, tuple(hw))[0]


def _array_set(array: np.ndarray, spec, hw, samples, seed, skip, quiet) -> CalibrationSet:
    if array.ndim != 4 or len(array) == 0:
        raise CalibrationError(f"Calibration arrays must be N×H×W×3 uint8 or N×3×H×W float32, got {array.shape}.")
    order = np.random.default_rng(seed).permutation(len(array))[skip:][:samples]
    if len(order) == 0:
        raise CalibrationError(f"No arrays left for calibration after the first {skip}.")
    chosen = array[order]
    if chosen.dtype == np.uint8 and chosen.shape[-1] == 3:
        tensors = _prep(list(chosen), spec, hw)
    elif chosen.shape[1] == 3 and tuple(chosen.shape[2:]) == tuple(hw):
        tensors = chosen.astype(np.float32)
    else:
        raise CalibrationError(f"Calibration arrays must be N×H×W×3 uint8 or N×3×{hw[0]}×{hw[1]} float32 "
                               f"(preprocessed), got {array.shape} {array.dtype}.")
    if not quiet:
        _warn_if_few(len(tensors), samples)
    return CalibrationSet(tensors, sources=[f"array[{i}]" for i in order])


def _warn_if_few(n: int, wanted: int | None) -> None:
    if n < RECOMMENDED_SAMPLES:
        warnings.warn(f"only {n} calibration images (asked for {wanted}); {RECOMMENDED_SAMPLES} or more are "
                      "recommended for stable ranges", stacklevel=3)
