"""Reading real-world image files into HxWx3 uint8 RGB arrays (OpenCV, headless).

Grayscale becomes 3 channels, alpha is dropped, 16-bit is scaled to 8-bit, EXIF orientation is
applied, multi-page TIFFs and animated GIFs give their first page/frame. Anything that cannot be
decoded raises :class:`ImageError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import ImageError

__all__ = ["IMAGE_SUFFIXES", "ImageError", "collect_images", "load_image", "to_rgb"]

# What a folder given on the command line is searched for (a file named explicitly is always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm",
                            ".pnm", ".jp2", ".exr", ".hdr", ".avif"})


def collect_images(paths) -> list[Path]:
    """Files and folders (their image files, sorted, not recursive) -> paths, in the order given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)  # missing files are reported when decoded, with the rest still predicted
    return found


def to_rgb(image: np.ndarray, color: str = "bgr", source: str = "array") -> np.ndarray:
    """Any OpenCV-decoded or user array (H×W, H×W×1/3/4; uint8/uint16/float) -> H×W×3 uint8 RGB."""
    import cv2

    if color not in ("rgb", "bgr"):
        raise ImageError(f"Unknown color order {color!r}: use 'rgb' or 'bgr'.")
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        raise ImageError(f"{source}: expected an HxW or HxWxC image array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}.")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        # Float images are taken to be in [0, 1]. Per-pixel only (no global max): one stray value (NaN, or the
        # uninitialised memory OpenCV's float64 TIFF decoder can leave) must not rescale the whole image.
        image = (np.clip(np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"{source}: unsupported pixel type {image.dtype}.")
    if image.ndim == 2 or image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2))
    if image.shape[2] == 4:
        image = image[:, :, :3]  # alpha dropped (not composited)
    if image.shape[2] != 3:
        raise ImageError(f"{source}: expected 1, 3 or 4 channels, got {image.shape[2]}.")
    if color == "bgr":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to H×W×3 uint8 RGB, or raise :class:`ImageError` naming the file."""
    import cv2

    path = Path(path)
    if not path.exists():
        raise ImageError(f"Image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a directory, not an image.")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"Image file is empty: {path}")
    if data[:4].tobytes() in (b"II*\x00", b"MM\x00*"):
        rgb = _first_tiff_page(path)
        if rgb is not None:
            return to_rgb(rgb, "rgb", str(path))
    if data[:2].tobytes() == b"\xff\xd8":  # JPEG: 8-bit, no alpha; IMREAD_COLOR applies EXIF orientation
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    else:  # keeps 16-bit depth and alpha, which to_rgb handles
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None and path.suffix.lower() == ".gif":
        image = _first_gif_frame(path)
    if image is None:
        raise ImageError(f"Cannot decode {path}: not an image, or the file is truncated.")
    return to_rgb(image, "bgr", str(path))


def _first_tiff_page(path: Path) -> np.ndarray | None:
    """Page 1 of a TIFF, RGB in its own dtype, through tifffile; None where tifffile cannot read it.

    OpenCV 5.0 decodes planar (one plane per channel) float64 TIFFs wrongly: measured on the scikit-image
    ``multipage_rgb.tif``, 299 of its 300 values differ from tifffile's, and some change from one decode to the next
    (uninitialised memory). tifffile reads every layout the TIFF spec allows; OpenCV stays the fallback.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            image = page.asarray()
            axes = page.axes
    except Exception:  # corrupt or exotic (JPEG-in-TIFF without imagecodecs, ...): let OpenCV try
        return None
    if "S" in axes and image.ndim == 3 and axes.index("S") == 0:
        image = np.moveaxis(image, 0, -1)  # planar: channels first -> last
    return image


def _first_gif_frame(path: Path) -> np.ndarray | None:
    import cv2

    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    return frame if ok else None
