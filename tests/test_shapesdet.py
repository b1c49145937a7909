"""ShapesDet (drkd.md §7.5): seeded, valid boxes, the small-object share, the context rule, COCO folder I/O."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from tinyvim_deploy.coco_eval import area_ranges
from tinyvim_deploy.errors import DatasetError
from tinyvim_deploy.tasks.detection import letterbox, unletterbox_boxes
from tinyvim_deploy.training import shapesdet as sd

SIZE = 128


def _equal(a: sd.DetectionData, b: sd.DetectionData) -> bool:
    return (np.array_equal(a.images, b.images) and all(np.array_equal(x, y) for x, y in zip(a.boxes, b.boxes))
            and all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels)))


def test_seeded_and_splits_disjoint():
    a = sd.make_detection_dataset(4, size=SIZE, seed=0)
    assert a.images.shape == (4, SIZE, SIZE, 3) and a.images.dtype == np.uint8 and len(a) == 4
    assert a.class_names == ("disk", "ring", "square", "triangle", "cross", "diamond")
    assert _equal(a, sd.make_detection_dataset(4, size=SIZE, seed=0))
    prefix = sd.make_detection_dataset(2, size=SIZE, seed=0)  # image i does not depend on n
    assert np.array_equal(prefix.images, a.images[:2])
    for other in (sd.make_detection_dataset(4, size=SIZE, seed=0, split="val"),
                  sd.make_detection_dataset(4, size=SIZE, seed=1),
                  sd.make_detection_dataset(4, size=SIZE, seed=0, mode="context")):
        assert not any(np.array_equal(x, y) for x in a.images for y in other.images)
    with pytest.raises(ValueError, match="split"):
        sd.make_detection_dataset(1, split="dev")
    with pytest.raises(ValueError, match="mode"):
        sd.make_detection_dataset(1, mode="dense")


@pytest.mark.parametrize("mode", ["iid", "context"])
def test_boxes_valid_and_shapes_drawn(mode):
    rng = np.random.default_rng(5)
    for _ in range(15):
        scene = sd._make_scene(SIZE, rng, mode)
        boxes, labels = scene.boxes, scene.labels
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and boxes.shape == (len(labels), 4)
        assert 2 <= len(labels) <= 12
        assert ((labels >= 0) & (labels < 6)).all()
        assert (boxes >= 0).all() and (boxes <= SIZE).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        diff = np.abs(scene.image.astype(np.int32) - scene.background.astype(np.int32)).sum(-1)
        for box, visible in zip(boxes, scene.visible):
            ys, xs = np.nonzero(visible)
            assert ys.size > 0, "an object is hidden completely"
            assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
            # The object's colour contrasts with what was under it (L1 ≥ 160 before noise and blending).
            assert diff[visible].mean() > 60


def test_at_least_40_percent_small():
    data = sd.make_detection_dataset(60, size=SIZE, seed=0)
    boxes = np.concatenate(data.boxes)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    small = area < area_ranges(SIZE)["small"][1]  # COCO's 32² scaled by 128/640: area < 6.4²
    assert small.mean() >= 0.40, small.mean()
    large = area >= area_ranges(SIZE)["medium"][1]
    assert large.mean() > 0.1  # and still a spread of sizes, not only tiny objects


def _edge_distance(box: np.ndarray, host: np.ndarray) -> float:
    """From a box's centre to a host's edge (its centre minus its mean half side)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = (host[2] - host[0] + host[3] - host[1]) / 4
    return math.hypot(cx - (host[0] + host[2]) / 2, cy - (host[1] + host[3]) / 2) - half


def test_context_satellites_follow_their_host():
    rng = np.random.default_rng(11)
    names = sd.SHAPESDET_CLASSES
    host_counts = set()
    for _ in range(15):
        scene = sd._make_scene(SIZE, rng, "context")
        hosts = np.flatnonzero(scene.host < 0)
        host_counts.add(len(hosts))
        sides = scene.boxes[:, 2:] - scene.boxes[:, :2]
        for h in hosts:
            satellites = np.flatnonzero(scene.host == h)
            assert 2 <= len(satellites) <= 5
            assert {names[i] for i in scene.labels[satellites]} == {sd.SATELLITE_OF[names[scene.labels[h]]]}
            assert sides[satellites].max() < sides[h].max()
        for s in np.flatnonzero(scene.host >= 0):  # the relation is readable: nearest host (edge) is its own
            distances = [_edge_distance(scene.boxes[s], scene.boxes[h]) for h in hosts]
            assert hosts[int(np.argmin(distances))] == scene.host[s]
    assert host_counts == {1, 2, 3}  # every documented host count occurs (and no other): the plan is not stuck


def test_coco_folder_round_trip(tmp_path):
    data = sd.make_detection_dataset(3, size=64, seed=2, mode="context")
    root = sd.write_coco_folder(tmp_path / "ds", data)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert not list(root.rglob("*.tmp"))
    back = sd.read_coco_folder(root)
    assert _equal(data, back) and back.class_names == data.class_names
    coco = back.to_coco()
    assert coco == data.to_coco()
    assert coco["annotations"][0]["id"] == 1 and coco["images"][0]["id"] == 1
    ann = coco["annotations"][0]
    assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3]) and ann["iscrowd"] == 0


def test_read_coco_variants(tmp_path):
    """Another tool's layout: json in annotations/, images beside it, sparse category ids, crowd, mixed sizes."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    cv2.imwrite(str(root / "a.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(root / "b.png"), np.full((10, 10, 3), 255, np.uint8))
    coco = {"images": [{"id": 5, "file_name": "a.png", "width": 30, "height": 20},
                       {"id": 9, "file_name": "b.png", "width": 10, "height": 10}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 40, 5], "iscrowd": 0},
                            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}],
            "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    (root / "annotations" / "instances.json").write_text(json.dumps(coco))
    data = sd.read_coco_folder(root)
    assert data.class_names == ("three", "seven")
    assert isinstance(data.images, list) and data.images[0].shape == (20, 30, 3)
    np.testing.assert_array_equal(data.labels[0], [1, 0])
    np.testing.assert_allclose(data.boxes[0], [[1, 2, 4, 6], [0, 0, 30, 5]])  # the second clipped to the image
    assert data.boxes[1].shape == (0, 4) and data.labels[1].shape == (0,)  # an image without objects is kept
    assert data.file_names == ["a.png", "b.png"]


def test_read_coco_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        sd.read_coco_folder(tmp_path / "nothing")
    root = tmp_path / "ds"
    root.mkdir()
    with pytest.raises(DatasetError, match="No COCO annotation file"):
        sd.read_coco_folder(root)
    (root / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"annotations\.json is not valid JSON"):
        sd.read_coco_folder(root)
    (root / "annotations.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}],
                                                       "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match=r"Image 'x\.png' listed in .*annotations\.json not found"):
        sd.read_coco_folder(root)
    (root / "annotations.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO detection file"):
        sd.read_coco_folder(root)
    (root / "annotations.json").unlink()
    (root / "a.json").write_text("{}")
    (root / "b.json").write_text("{}")
    with pytest.raises(DatasetError, match="Several annotation files"):
        sd.read_coco_folder(root)


def test_letterbox_round_trip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    out, scale, pad = letterbox(image, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8 and pad == (0, 0)
    assert scale == pytest.approx(1.28)
    assert (out[77:] == 114).all() and not (out[:76] == 114).all()  # 60·1.28 = 76.8 -> 77 rows of image
    boxes = np.array([[10, 5, 40, 50], [0, 0, 100, 60]], np.float32)
    back = unletterbox_boxes(boxes * scale, scale, image.shape[:2])
    np.testing.assert_allclose(back, boxes, atol=1e-4)
    clipped = unletterbox_boxes(np.array([[-5, 70, 140, 128]], np.float32), scale, (60, 100))
    np.testing.assert_allclose(clipped, [[0, 54.6875, 100, 60]], atol=1e-4)
