"""A labelled colour-image data set made by a seeded generator: 10 classes of shapes and textures.

Every image has a random background colour with a random gradient and noise; the object has a
random colour, size, position and rotation. Nothing is downloaded: the same seed gives the same
pixels on every machine (NumPy's PCG64 and OpenCV's integer drawing routines are deterministic).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

# Sorted, so that a class's index is its folder's position in sorted order (torchvision's ImageFolder rule).
CLASSES = ("checker", "circle", "cross", "dots", "h_stripes", "ring", "square", "star", "triangle", "v_stripes")


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    while True:
        c = rng.integers(0, 256, 3)
        if avoid is None or np.abs(c - avoid).sum() > 180:  # keep the object visible on its background
            return c


def _polygon(cx, cy, radius, points, angle, inner=None) -> np.ndarray:
    vertices = points * (2 if inner else 1)  # a star alternates outer and inner corners
    corners = []
    for i in range(vertices):
        r = radius if (inner is None or i % 2 == 0) else radius * inner
        a = angle + 2 * np.pi * i / vertices
        corners.append((cx + r * np.cos(a), cy + r * np.sin(a)))
    return np.round(np.array(corners)).astype(np.int32)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 mask of a texture patch, size×size."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(6, 14))
    if kind == "h_stripes":
        return (yy // (period // 2)) % 2 == 0
    if kind == "v_stripes":
        return (xx // (period // 2)) % 2 == 0
    if kind == "checker":
        return ((yy // period) + (xx // period)) % 2 == 0
    mask = np.zeros((size, size), bool)  # dots
    for cy in range(period // 2, size, period):
        for cx in range(period // 2, size, period):
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (period // 4) ** 2
    return mask


def make_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size×size×3 uint8 RGB image of class ``label``."""
    bg = _colour(rng)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.integers(-40, 41, 3)
    image = np.clip(bg + ramp + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
    fg = tuple(int(v) for v in _colour(rng, bg))
    kind = CLASSES[label]
    radius = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(radius + 2, size - radius - 2, 2))
    angle = float(rng.uniform(0, 2 * np.pi))
    if kind == "circle":
        cv2.circle(image, (cx, cy), radius, fg, -1, cv2.LINE_AA)
    elif kind == "ring":
        cv2.circle(image, (cx, cy), radius, fg, max(2, radius // 4), cv2.LINE_AA)
    elif kind == "square":
        cv2.fillPoly(image, [_polygon(cx, cy, radius, 4, angle)], fg, cv2.LINE_AA)
    elif kind == "triangle":
        cv2.fillPoly(image, [_polygon(cx, cy, radius, 3, angle)], fg, cv2.LINE_AA)
    elif kind == "star":
        cv2.fillPoly(image, [_polygon(cx, cy, radius, 5, angle, inner=0.45)], fg, cv2.LINE_AA)
    elif kind == "cross":
        t = max(3, radius // 3)
        for a in (angle, angle + np.pi / 2):
            dx, dy = int(radius * np.cos(a)), int(radius * np.sin(a))
            cv2.line(image, (cx - dx, cy - dy), (cx + dx, cy + dy), fg, t, cv2.LINE_AA)
    else:  # a textured square patch
        side = 2 * radius
        top, left = cy - radius, cx - radius
        mask = _texture(kind, side, rng)
        patch = image[top : top + side, left : left + side]
        patch[mask] = fg
    noise = rng.normal(0, float(rng.uniform(2, 10)), image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def make_dataset(n_per_class: int, *, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images N×size×size×3 uint8 RGB, labels N) in a seeded shuffled order."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    rng.shuffle(labels)
    images = np.stack([make_image(int(label), size, rng) for label in labels])
    return images, labels.astype(np.int64)


def write_image_folder(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write an ImageFolder tree (``root/<class>/<i>.png``), as calibration and ``compare`` read it."""
    root = Path(root)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        cv2.imwrite(str(root / CLASSES[label] / f"{i:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


# --------------------------------------------------------------------------------------------------
# Segmentation scenes: the same shapes and textures, several per image, with a per-pixel label map
# --------------------------------------------------------------------------------------------------

SEG_CLASSES = ("background",) + CLASSES  # label 0 = background, 1..10 = the shapes above


def _shape_mask(kind: str, size: int, cx: int, cy: int, radius: int, angle: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pixels painted, pixels labelled) of a shape (bool size×size), without anti-aliasing so labels are crisp.

    They differ for textures: the stripes/dots are painted, the whole patch is the textured region.
    """
    canvas = np.zeros((size, size), np.uint8)
    region = None
    if kind == "circle":
        cv2.circle(canvas, (cx, cy), radius, 1, -1)
    elif kind == "ring":
        cv2.circle(canvas, (cx, cy), radius, 1, max(2, radius // 4))
    elif kind in ("square", "triangle", "star"):
        points, inner = {"square": (4, None), "triangle": (3, None), "star": (5, 0.45)}[kind]
        cv2.fillPoly(canvas, [_polygon(cx, cy, radius, points, angle, inner)], 1)
    elif kind == "cross":
        t = max(3, radius // 3)
        for a in (angle, angle + np.pi / 2):
            dx, dy = int(radius * np.cos(a)), int(radius * np.sin(a))
            cv2.line(canvas, (cx - dx, cy - dy), (cx + dx, cy + dy), 1, t)
    else:  # a textured square patch
        side = 2 * radius
        top, left = max(0, cy - radius), max(0, cx - radius)
        patch = _texture(kind, side, rng)[: size - top, : size - left]
        canvas[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
        region = np.zeros((size, size), bool)
        region[top : top + patch.shape[0], left : left + patch.shape[1]] = True
    painted = canvas.astype(bool)
    return painted, painted if region is None else region


def make_scene(size: int, rng: np.random.Generator, objects: tuple[int, int] = (2, 4)) -> tuple[np.ndarray, np.ndarray]:
    """(size×size×3 uint8 RGB image, size×size uint8 labels): a noisy gradient background and 2–4 objects."""
    bg = _colour(rng)
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.integers(-40, 41, 3)
    image = np.clip(bg + ramp + rng.normal(0, 8, (size, size, 3)), 0, 255)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        label = int(rng.integers(1, len(SEG_CLASSES)))
        radius = int(rng.integers(size // 8, size // 4))
        cx, cy = (int(v) for v in rng.integers(radius + 2, size - radius - 2, 2))
        painted, region = _shape_mask(SEG_CLASSES[label], size, cx, cy, radius, float(rng.uniform(0, 2 * np.pi)), rng)
        if region is not painted:  # a textured region covers what lies below it, in the background colour
            image[region] = bg
        image[painted] = _colour(rng, bg)  # later objects occlude earlier ones, in pixels and in labels
        labels[region] = label
    noise = rng.normal(0, float(rng.uniform(2, 10)), image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), labels


def make_segmentation_dataset(n: int, *, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images N×size×size×3 uint8 RGB, labels N×size×size uint8), seeded."""
    rng = np.random.default_rng(seed)
    scenes = [make_scene(size, rng) for _ in range(n)]
    return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])


def write_segmentation_folder(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> Path:
    """``root/images/<i>.png`` and ``root/annotations/<i>.png`` (label = class index, no reduce_zero_label)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "annotations" / f"{i:05d}.png"), label)
    return root
