"""ShapesDet: the seeded synthetic detection set of ``shared/specs/drkd.md`` §7.5, plus COCO folder I/O.

Six classes (``SHAPESDET_CLASSES``: disk, ring, square, triangle, cross, diamond), 2–12 objects per
image on cluttered backgrounds (smooth noise, a colour gradient, random strokes), each object in a
random colour that contrasts with the background under it. Nothing is downloaded: NumPy's PCG64 and
OpenCV's integer drawing are deterministic, so a seed gives the same pixels on every machine.

Geometry (why it is not plain log-uniform). §7.5 asks for side lengths log-uniform in [S/24, S/3]
"so ≥40 % are small", with "small" measured by COCO's ranges rescaled to the image (area < (32·S/640)²,
i.e. side < S/20). Plain log-uniform puts only log(24/20)/log(8) ≈ 9 % of sides below S/20, so the two
halves of that sentence disagree. We keep the range and the claim: with probability
``SMALL_FRACTION`` (0.45) a side is log-uniform in [S/24, S/20) (COCO-small after rescaling), else
log-uniform in [S/20, S/3]. The side is the object's box side in whole pixels: every shape is drawn
into a side×side patch (4× supersampled, so edges are anti-aliased coverage, not jagged), and its
box is the tight box of the drawn pixels (coverage ≥ ``MIN_COVERAGE``), clipped to the image.

Occlusion: a placement is rejected when its box has IoU > 0.3 with an earlier box (§7.5), and also
when it would hide more than half of an earlier object's core pixels (a small object inside a large
box has a tiny IoU with it and could otherwise vanish under it while keeping its label).

Modes (``make_detection_image(..., mode=...)``):

- ``"iid"``: every object's class, size and position independent.
- ``"context"``: 1–3 large *hosts* (sides log-uniform in [S/6, S/3]), each with 2–5 small
  *satellites* (sides log-uniform in [S/24, S/18)) placed just outside it, each satellite nearer (to
  the host's edge) to its own host than to any other. All satellites of a host have the class
  ``SATELLITE_OF[host class]``::

      square, triangle -> disk        diamond, cross -> ring        disk -> square        ring -> diamond

  Satellites are always one of the two confusable pairs, disk/ring (the ring's hole is 0.4 of its
  radius: 1–2 px at these sizes, lost in the anti-aliasing and noise) and square/diamond (a square
  tilted ±10° vs one tilted 45°±10°: a 5–8 px blob either way). The host, large and readable, tells
  which member it is: instance relations carry the answer, which is DRKD's stated motivation.

Splits: ``make_detection_dataset`` seeds image i of (seed, split, mode) from
``SeedSequence([seed, SPLIT_ID[split], MODE_ID[mode]]).spawn(n)[i]``: train/val/test (and the two
modes) are disjoint streams, and the first k images do not depend on n.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

from tinyvim_deploy.errors import DatasetError, ImageError
from tinyvim_deploy.fileio import atomic_output, write_json
from tinyvim_deploy.images import load_image
from tinyvim_deploy.models.registry import SHAPESDET_CLASSES
from tinyvim_deploy.tasks.detection import letterbox, unletterbox_boxes
from tinyvim_deploy.training import SYNTHETIC

__all__ = [
    "MODE_ID",
    "SATELLITE_OF",
    "SHAPESDET_CLASSES",
    "SMALL_FRACTION",
    "SPLIT_ID",
    "DetectionData",
    "letterbox",
    "make_detection_dataset",
    "make_detection_image",
    "read_coco_folder",
    "unletterbox_boxes",
    "write_coco_folder",
]

SPLIT_ID = {"train": 0, "val": 1, "test": 2}
MODE_ID = {"iid": 0, "context": 1}
SMALL_FRACTION = 0.45  # share of iid sides drawn below S/20 (COCO-small after rescaling), see the docstring
SATELLITE_OF = {"square": "disk", "triangle": "disk", "diamond": "ring", "cross": "ring",
                "disk": "square", "ring": "diamond"}
MIN_COVERAGE = 0.15  # a pixel less covered than this is not drawn at all, so the box is the drawn pixels'
MAX_IOU = 0.3  # §7.5: occlusion up to IoU 0.3
MIN_VISIBLE = 0.5  # every object keeps at least half of its core (coverage ≥ 0.5) pixels visible
MIN_OBJECTS, MAX_OBJECTS = 2, 12
SUPERSAMPLE = 4
RING_HOLE = 0.4  # inner / outer radius of a ring
CROSS_ARM = 0.3  # half-width of a cross's arm / half its length

_CLASS_INDEX = {name: i for i, name in enumerate(SHAPESDET_CLASSES)}


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def _convex_inside(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Points (x, y) inside the convex polygon ``vertices`` [k, 2] (either orientation)."""
    sides = []
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        sides.append((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0))
    s = np.stack(sides)
    return (s >= 0).all(0) | (s <= 0).all(0)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _shape_alpha(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage [side, side] float32 in [0, 1] of one shape filling a side×side patch (long extent = side)."""
    n = side * SUPERSAMPLE
    centres = (np.arange(n) + 0.5) / SUPERSAMPLE  # sample points in patch pixel units
    x, y = np.meshgrid(centres, centres)
    half = side / 2.0
    if kind in ("disk", "ring"):
        r2 = (x - half) ** 2 + (y - half) ** 2
        inside = r2 <= half**2
        if kind == "ring":
            inside &= r2 >= (RING_HOLE * half) ** 2
    else:
        unit = {"square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),
                "diamond": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),
                "triangle": np.array([[math.cos(a), math.sin(a)] for a in 2 * np.pi * np.arange(3) / 3]),
                "cross": np.array([[-1, -CROSS_ARM], [1, -CROSS_ARM], [1, CROSS_ARM], [-1, CROSS_ARM]])}[kind]
        tilt = math.radians(10)
        angle = {"square": rng.uniform(-tilt, tilt), "diamond": np.pi / 4 + rng.uniform(-tilt, tilt),
                 "triangle": rng.uniform(0, 2 * np.pi), "cross": rng.uniform(0, np.pi / 2)}[kind]
        polygons = [_rotate(unit, angle)]
        if kind == "cross":
            polygons.append(_rotate(unit, angle + np.pi / 2))
        corners = np.concatenate(polygons)
        lo, hi = corners.min(0), corners.max(0)
        # Scale so the longer extent is the patch side and centre it: the box side is then `side`.
        scale = side / (hi - lo).max()
        middle = (lo + hi) / 2
        inside = np.zeros((n, n), bool)
        for poly in polygons:
            inside |= _convex_inside(x, y, (poly - middle) * scale + half)
    alpha = inside.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)
    alpha[alpha < MIN_COVERAGE] = 0.0
    return alpha


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Float32 [size, size, 3] clutter: base colour + gradient + smooth noise + strokes."""
    base = rng.uniform(30, 225, 3)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1, 1, size)
    plane = np.cos(direction) * ramp[None, :] + np.sin(direction) * ramp[:, None]
    image = base + plane[:, :, None] * rng.uniform(-60, 60, 3)
    cells = int(rng.integers(3, 9))  # smooth noise: a coarse random grid, bicubically upsampled
    coarse = rng.normal(0, rng.uniform(8, 30), (cells, cells, 3)).astype(np.float32)
    image += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image, 0, 255).astype(np.uint8)
    thickness = max(1, size // 96)
    for _ in range(int(rng.integers(2, 9))):  # strokes: open polylines, thinner than any object's detail
        points = rng.integers(0, size, (int(rng.integers(2, 6)), 2)).astype(np.int32)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.polylines(image, [points], False, colour, int(rng.integers(1, thickness + 2)), cv2.LINE_AA)
    return image.astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    for _ in range(50):
        colour = rng.integers(0, 256, 3).astype(np.float32)
        if np.abs(colour - under).sum() >= 160:
            return colour
    return np.where(under < 128, 255.0, 0.0).astype(np.float32)  # the far corner of the RGB cube


# --------------------------------------------------------------------------------------------------
# Scene planning: geometry first (boxes, occlusion), colours when drawing
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Placed:
    label: int
    alpha: np.ndarray  # [h, w] coverage of the in-image part
    y0: int
    x0: int
    box: np.ndarray  # x1y1x2y2, pixel-edge coordinates
    core: int  # pixels with coverage ≥ 0.5
    host: int = -1  # index of the host object, for satellites


@dataclasses.dataclass
class _Scene:
    image: np.ndarray  # [S, S, 3] uint8 RGB
    background: np.ndarray  # [S, S, 3] uint8, before the objects and the final noise
    boxes: np.ndarray  # [n, 4] float32
    labels: np.ndarray  # [n] int64
    host: np.ndarray  # [n] int64: index of the host of a satellite, -1 otherwise
    visible: list[np.ndarray]  # [S, S] bool: each object's core pixels not covered by a later one


class _Planner:
    def __init__(self, size: int):
        self.size = size
        self.owner = np.full((size, size), -1, np.int32)  # topmost object per core pixel
        self.objects: list[_Placed] = []

    def try_place(self, label: int, alpha: np.ndarray, y0: int, x0: int, host: int = -1) -> bool:
        side, size = alpha.shape[0], self.size
        top, left = max(0, y0), max(0, x0)
        bottom, right = min(size, y0 + side), min(size, x0 + side)
        if bottom - top < 2 or right - left < 2:
            return False
        crop = alpha[top - y0 : bottom - y0, left - x0 : right - x0]
        if crop.sum() < 0.6 * alpha.sum():  # mostly outside the image
            return False
        rows, cols = np.nonzero(crop)
        if rows.size == 0:
            return False
        box = np.array([left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1], np.float32)
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            return False
        if self.objects and _iou(box, np.stack([o.box for o in self.objects])).max() > MAX_IOU:
            return False
        core = crop >= 0.5
        if not core.any():
            return False
        region = self.owner[top:bottom, left:right]
        lost = np.bincount(region[core & (region >= 0)], minlength=len(self.objects))
        visible = np.bincount(self.owner[self.owner >= 0], minlength=len(self.objects))
        for i, obj in enumerate(self.objects):
            if lost[i] and visible[i] - lost[i] < MIN_VISIBLE * obj.core:
                return False
        region[core] = len(self.objects)
        self.objects.append(_Placed(label, crop, top, left, box, int(core.sum()), host))
        return True

    def snapshot(self) -> tuple[np.ndarray, int]:
        return self.owner.copy(), len(self.objects)

    def restore(self, state: tuple[np.ndarray, int]) -> None:
        self.owner, count = state[0], state[1]
        del self.objects[count:]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _log_uniform_side(rng: np.random.Generator, lo: float, hi: float) -> int:
    return max(3, int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))  # floor: stays below `hi`


def _plan_iid(planner: _Planner, rng: np.random.Generator) -> None:
    size = planner.size
    wanted = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    for attempt in range(200):
        if len(planner.objects) >= wanted or (attempt >= 8 * wanted and len(planner.objects) >= MIN_OBJECTS):
            return
        if rng.random() < SMALL_FRACTION:
            side = _log_uniform_side(rng, size / 24, size / 20)
        else:
            side = _log_uniform_side(rng, size / 20, size / 3)
        label = int(rng.integers(len(SHAPESDET_CLASSES)))
        alpha = _shape_alpha(SHAPESDET_CLASSES[label], side, rng)
        for _ in range(20):  # new positions for the same object before giving up on it
            y0, x0 = (int(v) for v in rng.integers(-(side // 4), size - side + side // 4 + 1, 2))
            if planner.try_place(label, alpha, y0, x0):
                break
    if len(planner.objects) < MIN_OBJECTS:
        raise RuntimeError("ShapesDet could not place two objects; this is a bug")  # never seen: 200 tries


def _plan_context(planner: _Planner, rng: np.random.Generator) -> None:
    size = planner.size
    n_hosts = int(rng.integers(1, 4))
    sat_max = size / 18
    centres: list[tuple[float, float, float]] = []  # (cx, cy, half side) of the hosts placed so far
    for h in range(n_hosts):
        left_after = n_hosts - h - 1
        budget = MAX_OBJECTS - len(planner.objects) - 1 - 2 * left_after  # keep room for later groups
        if budget < 2:
            break
        state = planner.snapshot()
        host_label = int(rng.integers(len(SHAPESDET_CLASSES)))
        side = _log_uniform_side(rng, size / 6, size / 3)
        margin = int(sat_max) + 2  # room for satellites on every side
        lo, hi = margin, size - side - margin
        if hi < lo:
            continue
        for _ in range(30):
            y0, x0 = (int(v) for v in rng.integers(lo, hi + 1, 2))
            if planner.try_place(host_label, _shape_alpha(SHAPESDET_CLASSES[host_label], side, rng), y0, x0):
                try:
                    _check_nearest_host(planner)  # the new host must not be nearer to earlier satellites
                    break
                except _Replan:
                    planner.restore(state)
        else:
            continue
        host_index = len(planner.objects) - 1
        hx, hy, hh = _centre_and_reach(planner.objects[host_index].box)
        sat_label = _CLASS_INDEX[SATELLITE_OF[SHAPESDET_CLASSES[host_label]]]
        wanted = min(int(rng.integers(2, 6)), budget)
        placed = 0
        for _ in range(12 * wanted):
            if placed == wanted:
                break
            s = _log_uniform_side(rng, size / 24, sat_max)
            phi = rng.uniform(0, 2 * np.pi)
            # Just outside the host's edge (hh·√2 reaches a square host's corner; an inner point is rejected
            # by the IoU/visibility rules anyway), a few pixels away at most: clustered, not scattered.
            reach = hh * rng.uniform(0.9, 1.35) + s * rng.uniform(0.5, 1.5)
            cx, cy = hx + reach * math.cos(phi), hy + reach * math.sin(phi)
            if any(math.hypot(cx - ox, cy - oy) - oh <= reach - hh for ox, oy, oh in centres):
                continue  # nearer another host: the relation would be ambiguous
            alpha = _shape_alpha(SHAPESDET_CLASSES[sat_label], s, rng)
            if planner.try_place(sat_label, alpha, int(round(cy - s / 2)), int(round(cx - s / 2)), host_index):
                placed += 1
        if placed < 2:
            planner.restore(state)  # a host needs 2–5 satellites: drop the whole group
            continue
        centres.append((hx, hy, hh))
    _check_nearest_host(planner)


def _centre_and_reach(box: np.ndarray) -> tuple[float, float, float]:
    """A host's box centre and mean half side: a satellite's distance to the host is measured from its edge."""
    return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2, float(box[2] - box[0] + box[3] - box[1]) / 4


def _check_nearest_host(planner: _Planner) -> None:
    """Each satellite must be nearest (box centre to host edge) to its own host; a host placed after a
    satellite can break that, and such a scene is planned again."""
    hosts = {i: _centre_and_reach(o.box) for i, o in enumerate(planner.objects) if o.host < 0}
    for o in planner.objects:
        if o.host < 0:
            continue
        cx, cy = float(o.box[0] + o.box[2]) / 2, float(o.box[1] + o.box[3]) / 2
        dist = {i: math.hypot(cx - hx, cy - hy) - hh for i, (hx, hy, hh) in hosts.items()}
        if min(dist, key=dist.__getitem__) != o.host:
            raise _Replan


class _Replan(Exception):
    pass


def _make_scene(size: int, rng: np.random.Generator, mode: str = "iid") -> _Scene:
    if mode not in MODE_ID:
        raise ValueError(f"unknown ShapesDet mode {mode!r}: use one of {sorted(MODE_ID)}")
    if size < 32:
        raise ValueError(f"ShapesDet images must be at least 32 px, got {size}")
    background = _background(size, rng)
    for _ in range(100):
        planner = _Planner(size)
        try:
            (_plan_iid if mode == "iid" else _plan_context)(planner, rng)
        except _Replan:
            continue
        if len(planner.objects) >= MIN_OBJECTS:
            break
    else:
        raise RuntimeError(f"ShapesDet could not plan a {mode} scene; this is a bug")
    image = background.copy()
    for obj in planner.objects:  # drawing order = planning order: satellites on top of their host
        h, w = obj.alpha.shape
        patch = image[obj.y0 : obj.y0 + h, obj.x0 : obj.x0 + w]
        a = obj.alpha[:, :, None]
        colour = _contrasting_colour(rng, patch[obj.alpha > 0].mean(0))
        patch[:] = patch * (1 - a) + colour * a
    image += rng.normal(0, rng.uniform(2, 6), image.shape).astype(np.float32)
    objects = planner.objects
    return _Scene(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        background=np.clip(np.rint(background), 0, 255).astype(np.uint8),
        boxes=np.stack([o.box for o in objects]).astype(np.float32),
        labels=np.array([o.label for o in objects], np.int64),
        host=np.array([o.host for o in objects], np.int64),
        visible=[planner.owner == i for i in range(len(objects))],
    )


def make_detection_image(size: int, rng: np.random.Generator,
                         mode: str = "iid") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ShapesDet image: (RGB [size, size, 3] uint8, boxes [n, 4] float32 x1y1x2y2 px, labels [n] int64).

    ``mode`` is ``"iid"`` or ``"context"`` (host/satellite groups, the rule in the module docstring).
    """
    scene = _make_scene(size, rng, mode)
    return scene.image, scene.boxes, scene.labels


# --------------------------------------------------------------------------------------------------
# Data sets and COCO folders
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DetectionData:
    """Images with their boxes (x1y1x2y2 float32 pixels) and labels (int64, indices into class_names)."""

    images: list[np.ndarray] | np.ndarray  # [N, H, W, 3] uint8 when all sizes agree, else a list of [H, W, 3]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    class_names: tuple[str, ...] = SHAPESDET_CLASSES
    file_names: list[str] | None = None  # as read from a COCO file; None: f"{i:05d}.png"

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.boxes) != n or len(self.labels) != n or (self.file_names is not None and len(self.file_names) != n):
            raise ValueError(f"DetectionData: {n} images but {len(self.boxes)} box and {len(self.labels)} label arrays")

    def __len__(self) -> int:
        return len(self.images)

    def file_name(self, index: int) -> str:
        return self.file_names[index] if self.file_names is not None else f"{index:05d}.png"

    def to_coco(self) -> dict:
        """The annotations as a COCO json dict (image and annotation ids from 1: pycocotools needs ann id ≥ 1)."""
        images, annotations = [], []
        for i in range(len(self)):
            height, width = self.images[i].shape[:2]
            images.append({"id": i + 1, "file_name": self.file_name(i), "width": int(width), "height": int(height)})
            for box, label in zip(np.asarray(self.boxes[i], np.float64), self.labels[i]):
                x, y, w, h = float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}


def make_detection_dataset(n: int, *, size: int = 128, seed: int = 0, mode: str = "iid",
                           split: str = "train") -> DetectionData:
    """``n`` ShapesDet images of (seed, split, mode); the streams of different splits/modes are disjoint."""
    if split not in SPLIT_ID:
        raise ValueError(f"unknown split {split!r}: use one of {list(SPLIT_ID)}")
    if mode not in MODE_ID:
        raise ValueError(f"unknown ShapesDet mode {mode!r}: use one of {sorted(MODE_ID)}")
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be non-negative, got n={n}, seed={seed}")
    # One child stream per image: image i is the same whatever n is.
    children = np.random.SeedSequence([seed, SPLIT_ID[split], MODE_ID[mode]]).spawn(n)
    images, boxes, labels = [], [], []
    for child in children:
        image, b, lab = make_detection_image(size, np.random.default_rng(child), mode)
        images.append(image)
        boxes.append(b)
        labels.append(lab)
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return DetectionData(stacked, boxes, labels, SHAPESDET_CLASSES)


def write_coco_folder(root: str | os.PathLike, data: DetectionData) -> Path:
    """Write ``root/images/<file_name>`` (PNG) and ``root/annotations.json``, each file atomically."""
    root = Path(root)
    coco = data.to_coco()
    for entry, image in zip(coco["images"], data.images):
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
        if not ok:
            raise DatasetError(f"Cannot encode {entry['file_name']} as PNG.")
        # imencode, not imwrite: the temporary name's .tmp suffix would not tell imwrite the format.
        with atomic_output(root / "images" / entry["file_name"]) as tmp:
            tmp.write_bytes(encoded.tobytes())
    write_json(root / "annotations.json", coco)  # last: a folder with annotations.json is complete
    return root


def _find_annotation_file(root: Path) -> Path:
    if not root.is_dir():
        raise DatasetError(f"Dataset folder not found: {root}")
    if (root / "annotations.json").is_file():
        return root / "annotations.json"
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"No COCO annotation file in {root}: expected {root / 'annotations.json'} or one *.json "
                           f"in {root} or {root / 'annotations'}.")
    raise DatasetError(f"Several annotation files in {root} ({', '.join(p.name for p in found)}): "
                       f"name the one to use annotations.json.")


def read_coco_folder(root: str | os.PathLike) -> DetectionData:
    """Read a COCO detection folder: an annotation json and its images (under ``images/`` or beside the json).

    Category ids map to labels 0..K-1 in sorted id order; crowd annotations and empty boxes are skipped,
    boxes are clipped to their image, images without annotations are kept. ``images`` is a stacked
    array when all images have one size, else a list.
    """
    root = Path(root)
    path = _find_annotation_file(root)
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read {path}: {e}") from None
    try:
        categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
        label_of = {int(c["id"]): k for k, c in enumerate(categories)}
        class_names = tuple(str(c["name"]) for c in categories)
        per_image: dict[int, list[tuple[list[float], int]]] = {int(im["id"]): [] for im in coco["images"]}
        for ann in coco.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                continue
            category = int(ann["category_id"])
            if category not in label_of:
                raise DatasetError(f"{path}: annotation {ann.get('id')} has category_id {category}, "
                                   f"which is not in its categories.")
            image_id = int(ann["image_id"])
            if image_id not in per_image:
                raise DatasetError(f"{path}: annotation {ann.get('id')} refers to image_id {image_id}, "
                                   f"which is not in its images.")
            per_image[image_id].append(([x, y, x + w, y + h], label_of[category]))
        entries = [(int(im["id"]), str(im["file_name"]), im.get("width"), im.get("height")) for im in coco["images"]]
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(f"{path} is not a COCO detection file: {type(e).__name__} {e}.") from None
    if not entries:
        raise DatasetError(f"{path} lists no images.")

    images, boxes, labels, names = [], [], [], []
    for image_id, file_name, width, height in entries:
        candidates = [root / "images" / file_name, root / file_name]
        image_path = next((p for p in candidates if p.is_file()), None)
        if image_path is None:
            raise DatasetError(f"Image {file_name!r} listed in {path} not found under {root / 'images'} or {root}.")
        try:
            rgb = load_image(image_path)
        except ImageError as e:
            raise DatasetError(str(e)) from None
        if (width is not None and int(width) != rgb.shape[1]) or (height is not None and int(height) != rgb.shape[0]):
            raise DatasetError(f"{image_path} is {rgb.shape[1]}×{rgb.shape[0]} but {path} says {width}×{height}.")
        anns = per_image[image_id]
        b = np.array([a[0] for a in anns], np.float32).reshape(-1, 4)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, rgb.shape[1])
        b[:, 1::2] = np.clip(b[:, 1::2], 0, rgb.shape[0])
        images.append(rgb)
        boxes.append(b)
        labels.append(np.array([a[1] for a in anns], np.int64))
        names.append(file_name)
    same_size = len({im.shape for im in images}) == 1
    return DetectionData(np.stack(images) if same_size else images, boxes, labels, class_names, names)


def load_detection_data(source: str, split: str, images: int, size: int, seed: int):
    """``synthetic:shapesdet[:iid|context]`` (seeded, disjoint splits) or a COCO folder (json + images)."""
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
