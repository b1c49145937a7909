"""COCO AP via pycocotools (drkd.md §7.4/§7.5 item 5): perfect, shifted and empty predictions; area ranges."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pycocotools", reason="pycocotools is not installed (pip install pycocotools)")

from tinyvim_deploy.coco_eval import area_ranges, coco_evaluate, detections_from_arrays  # noqa: E402
from tinyvim_deploy.errors import DatasetError  # noqa: E402
from tinyvim_deploy.training.shapesdet import make_detection_dataset  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def data():
    return make_detection_dataset(8, size=SIZE, seed=0)


def _predictions(data, shift: float = 0.0) -> list[dict]:
    """The GT boxes as detections (score 1), moved right and down by ``shift`` of their width and height."""
    detections = []
    for i, (boxes, labels) in enumerate(zip(data.boxes, data.labels)):
        size = boxes[:, 2:] - boxes[:, :2]
        moved = boxes + shift * np.concatenate([size, size], axis=1)
        detections += detections_from_arrays(i + 1, moved, np.ones(len(boxes)), labels)
    return detections


def test_ground_truth_as_predictions_is_perfect(data, capsys):
    metrics = coco_evaluate(data.to_coco(), _predictions(data), image_size=SIZE)
    assert metrics.ap == pytest.approx(1.0) and metrics.ap50 == pytest.approx(1.0)
    assert metrics.ap75 == pytest.approx(1.0) and metrics.ap_small == pytest.approx(1.0)
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_shifted_boxes_score_lower(data):
    gt = data.to_coco()
    slightly = coco_evaluate(gt, _predictions(data, 0.1), image_size=SIZE)
    third = coco_evaluate(gt, _predictions(data, 1 / 3), image_size=SIZE)
    assert 0.0 < slightly.ap < 1.0
    assert third.ap < slightly.ap and third.ap50 < 1.0  # IoU (2/3)²/(2-(2/3)²) ≈ 0.29 < 0.5


def test_empty_detections_give_zero(data):
    metrics = coco_evaluate(data.to_coco(), [], image_size=SIZE)
    assert metrics.ap == 0.0 and metrics.ap50 == 0.0 and metrics.ap75 == 0.0 and metrics.ap_small == 0.0


def test_area_ranges_rescaled(data):
    assert area_ranges()["small"] == (0.0, 32.0**2) and area_ranges()["medium"] == (32.0**2, 96.0**2)
    ranges = area_ranges(SIZE)  # ×128/640 = ×0.2
    assert ranges["small"][1] == pytest.approx(6.4**2) and ranges["medium"][1] == pytest.approx(19.2**2)
    assert ranges["large"][0] == ranges["medium"][1]
    metrics = coco_evaluate(data.to_coco(), _predictions(data), image_size=SIZE)
    assert metrics.area_ranges == ranges
    table = "\n".join(metrics.table())
    assert "6.4²" in table and "19.2²" in table and "128/640" in table


def test_ground_truth_pitfalls_handled(data):
    """Annotation ids from 0 and missing area/iscrowd would silently break pycocotools; they are fixed in a copy."""
    gt = data.to_coco()
    for i, ann in enumerate(gt["annotations"]):
        ann["id"] = i
        del ann["area"], ann["iscrowd"]
    assert coco_evaluate(gt, _predictions(data)).ap == pytest.approx(1.0)
    assert gt["annotations"][0]["id"] == 0  # the caller's dict is untouched


def test_detections_from_arrays_and_unknown_images():
    dets = detections_from_arrays(3, np.array([[1, 2, 11, 22]]), np.array([0.5]), np.array([0]))
    assert dets == [{"image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    gt = {"images": [{"id": 1, "width": 8, "height": 8, "file_name": "a.png"}], "annotations": [],
          "categories": [{"id": 1, "name": "disk"}]}
    with pytest.raises(DatasetError, match="image ids not in the ground truth"):
        coco_evaluate(gt, dets)
