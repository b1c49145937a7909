"""Detection data named on the command line: a COCO folder, or the seeded synthetic ShapesDet set."""

from __future__ import annotations

from pathlib import Path

from tinyvim_deploy.errors import DatasetError

SYNTHETIC = "synthetic:shapesdet"


def load_detection_data(source: str, split: str, images: int, size: int, seed: int):
    """``synthetic:shapesdet[:iid|context]`` (seeded, disjoint splits) or a COCO folder (json + images)."""
    from tinyvim_deploy.training.shapesdet import make_detection_dataset, read_coco_folder

    if source.startswith(SYNTHETIC):
        mode = source[len(SYNTHETIC):].lstrip(":") or "iid"
        if mode not in ("iid", "context"):
            raise DatasetError(f"Unknown ShapesDet mode {mode!r}: use {SYNTHETIC}:iid or {SYNTHETIC}:context.")
        return make_detection_dataset(images, size=size, seed=seed, mode=mode, split=split)
    if source.startswith("synthetic:"):
        raise DatasetError(f"Unknown synthetic set {source!r}: the detection one is {SYNTHETIC}.")
    if not Path(source).is_dir():
        raise DatasetError(f"Data folder not found: {source}")
    return read_coco_folder(source)
