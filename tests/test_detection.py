"""Detectors of drkd.md §7.2 (shapes, sizes, decode) and the NMS reference / fixed-K contract of §7.3."""

from __future__ import annotations

import math

import pytest
import torch

from tinyvim_deploy.models.detection import DETECTOR_CONFIGS, TinyViMDetector, decode, make_points
from tinyvim_deploy.models.registry import get_constructor, get_spec
from tinyvim_deploy.tasks.nms import box_iou, multiclass_nms, nms
from tinyvim_deploy.training.losses import detection_loss

SIZE = 320
N_POINTS = sum((SIZE // s) ** 2 for s in (8, 16, 32))  # 1600 + 400 + 100
SPEC_ESTIMATES = {"s": (5.3e6, 2.3e9), "b": (11.6e6, 6e9)}  # §7.2 "estimates to be measured": params, MACs at 320²

# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["s", "b"])
def test_detector_outputs_and_size(variant):
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_spec(f"tinyvim-{variant}-det")
    assert (spec.task, spec.input_size, spec.num_classes, spec.resize_mode) == ("detection", (3, SIZE, SIZE), 6, "letterbox")
    torch.manual_seed(0)
    model = get_constructor(spec.name)().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        boxes, scores = model(torch.randn(1, 3, SIZE, SIZE))
    assert boxes.shape == (1, N_POINTS, 4) and scores.shape == (1, N_POINTS, 6)
    assert boxes.dtype == scores.dtype == torch.float32
    assert bool(((scores >= 0) & (scores <= 1)).all()) and bool((boxes[..., 2:] >= boxes[..., :2]).all())
    params, macs = sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2
    assert (params, macs) == (spec.params, spec.macs)
    # Measured vs §7.2's estimates: MACs agree (S 2.30 G, B 5.91 G); params are above them (S 5.76 M vs ≈5.3 M,
    # B 12.47 M vs ≈11.6 M) because the dense backbones alone are 5.46 M / 10.74 M.
    est_params, est_macs = SPEC_ESTIMATES[variant]
    assert abs(macs / est_macs - 1) < 0.05 and abs(params / est_params - 1) < 0.10


def test_make_points_and_decode_by_hand():
    like = torch.zeros(1)
    points = make_points([(2, 2), (1, 1)], (8, 16), like)
    assert points.tolist() == [[4, 4], [12, 4], [4, 12], [12, 12], [8, 8]]

    distances = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0], [4, 4, 4, 4], [10, 0, 0, 10], [8, 8, 8, 8]]])
    cls = torch.zeros(1, 5, 2)
    cls[0, 0] = torch.tensor([math.log(4.0), -math.log(4.0)])  # sigmoid -> 0.8, 0.2
    ctr = torch.full((1, 5, 1), math.log(4.0))  # sigmoid -> 0.8
    boxes, scores = decode(points, distances, cls, ctr)
    assert boxes[0].tolist() == [[3, 2, 7, 8], [12, 4, 12, 4], [0, 8, 8, 16], [2, 12, 12, 22], [0, 0, 16, 16]]
    torch.testing.assert_close(scores[0, 0], torch.tensor([0.8, 0.4]))  # sqrt(0.8·0.8), sqrt(0.2·0.8)
    torch.testing.assert_close(scores[0, 1], torch.full((2,), math.sqrt(0.5 * 0.8)))


def test_forward_decodes_the_raw_head_outputs():
    torch.manual_seed(0)
    model = TinyViMDetector(DETECTOR_CONFIGS["s"]).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        cls_maps, box_maps, ctr_maps = model.forward_raw(x)
        boxes, scores = model(x)
    # P4 (stride 16, 4×6 map), row 2, column 5: flat index 8·12 + 2·6 + 5, centre (88, 40)
    i = 8 * 12 + 2 * 6 + 5
    l_, t, r, b = box_maps[1][0, :, 2, 5].tolist()
    torch.testing.assert_close(boxes[0, i], torch.tensor([88 - l_, 40 - t, 88 + r, 40 + b]))
    expected = torch.sqrt(torch.sigmoid(cls_maps[1][0, :, 2, 5]) * torch.sigmoid(ctr_maps[1][0, 0, 2, 5]))
    torch.testing.assert_close(scores[0, i], expected)


def test_training_losses_are_finite_and_reach_the_head():
    torch.manual_seed(0)
    model = TinyViMDetector(DETECTOR_CONFIGS["s"]).train()
    gt_boxes = [torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 62.0, 60.0]]), torch.zeros(0, 4)]
    gt_labels = [torch.tensor([1, 4]), torch.zeros(0, dtype=torch.long)]
    losses = detection_loss(*model.forward_raw(torch.randn(2, 3, 64, 64)), model.strides, gt_boxes, gt_labels)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()) and float(losses["box"].detach()) > 0
    total.backward()
    assert all(p.grad is not None for p in model.head.parameters())


# --------------------------------------------------------------------------------------------------
# NMS against a brute-force reference
# --------------------------------------------------------------------------------------------------


def _iou(a: list[float], b: list[float]) -> float:
    """Same float operations as ``box_iou`` (inputs are float64, so results are bit-identical)."""
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def brute_force_nms(boxes: list, scores: list, thr: float, classes: list | None = None) -> list[int]:
    """O(n²) greedy NMS: visit by (score desc, index asc); keep unless a kept same-class box has IoU > thr."""
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if not any((classes is None or classes[j] == classes[i]) and _iou(boxes[j], boxes[i]) > thr for j in kept):
            kept.append(i)
    return kept


def random_boxes(gen: torch.Generator, n: int, extent: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * extent
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * extent / 3 + 1
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize("seed", range(6))
def test_nms_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    boxes = random_boxes(gen, 150)
    scores = (torch.rand(150, generator=gen, dtype=torch.float64) * 20).round() / 20  # many exact ties
    classes = torch.randint(0, 4, (150,), generator=gen)
    for thr in (0.3, 0.5, 0.7):
        args = (boxes.tolist(), scores.tolist(), thr)
        assert nms(boxes, scores, thr).tolist() == brute_force_nms(*args)
        assert nms(boxes, scores, thr, classes).tolist() == brute_force_nms(*args, classes.tolist())


def test_iou_equal_to_threshold_does_not_suppress():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert float(box_iou(boxes, boxes)[0, 1]) == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_different_classes_never_suppress_each_other():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(6, 1)  # six identical boxes
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert nms(boxes, scores, 0.5, torch.tensor([0, 1, 2, 3, 4, 5])).tolist() == [0, 1, 2, 3, 4, 5]
    assert nms(boxes, scores, 0.5, torch.tensor([0, 1, 0, 1, 2, 2])).tolist() == [0, 1, 4]
    # the same box scored for two classes survives once per class in the contract
    det = multiclass_nms(boxes[None, :2], torch.tensor([[[0.9, 0.8], [0.7, 0.6]]]), iou_threshold=0.5, max_det=10)
    assert det.num_dets.tolist() == [[2]] and det.classes[0, :2].tolist() == [0, 1]


# --------------------------------------------------------------------------------------------------
# The fixed-K contract
# --------------------------------------------------------------------------------------------------


def brute_force_contract(boxes, scores, score_thr, iou_thr, max_det):
    """All (box, class) pairs above the threshold, greedy per class, best ``max_det``; ties by class·N + box."""
    n, c = scores.shape
    pairs = [(k, i) for k in range(c) for i in range(n) if scores[i, k] > score_thr]  # class-major flat order
    kept = brute_force_nms([boxes[i].tolist() for _, i in pairs], [float(scores[i, k]) for k, i in pairs], iou_thr,
                           [k for k, _ in pairs])
    return [(pairs[j][1], pairs[j][0]) for j in kept[:max_det]]


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_nms_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.stack([random_boxes(gen, 120) for _ in range(2)])
    scores = (torch.rand(2, 120, 3, generator=gen, dtype=torch.float64) * 10).round() / 10
    det = multiclass_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_det=40, pre_nms_topk=1000)
    for b in range(2):
        expected = brute_force_contract(boxes[b], scores[b], 0.3, 0.5, 40)
        count = int(det.num_dets[b, 0])
        assert count == len(expected)
        assert det.classes[b, :count].tolist() == [k for _, k in expected]
        torch.testing.assert_close(det.boxes[b, :count], boxes[b, [i for i, _ in expected]].float())
        torch.testing.assert_close(det.scores[b, :count], torch.stack([scores[b, i, k] for i, k in expected]).float())


def test_fixed_k_padding_and_truncation():
    gen = torch.Generator().manual_seed(0)
    boxes = torch.stack([random_boxes(gen, 300) for _ in range(3)]).float()
    scores = torch.rand(3, 300, 6, generator=gen) * 0.5
    scores[1] = 0.0  # image 1: no detection at all
    scores[2] = 0.0
    scores[2, :3, 2] = torch.tensor([0.9, 0.8, 0.7])  # image 2: at most three
    det = multiclass_nms(boxes, scores, score_threshold=0.05, iou_threshold=0.6, max_det=25)
    assert det.num_dets.shape == (3, 1) and det.num_dets.dtype == torch.int32
    assert det.boxes.shape == (3, 25, 4) and det.boxes.dtype == torch.float32
    assert det.scores.shape == (3, 25) and det.scores.dtype == torch.float32
    assert det.classes.shape == (3, 25) and det.classes.dtype == torch.int32
    n0, n1, n2 = det.num_dets.view(-1).tolist()
    assert n0 == 25 and n1 == 0 and 1 <= n2 <= 3  # image 0 has far more survivors than K: truncated
    assert bool((det.scores[0, :-1] >= det.scores[0, 1:]).all())  # descending
    for b, n in ((1, n1), (2, n2)):
        assert not det.boxes[b, n:].any() and not det.scores[b, n:].any() and bool((det.classes[b, n:] == -1).all())
    assert det.classes[2, :n2].tolist() == [2] * n2
    # pre-NMS TopK larger than the number of points is clamped (§7.3 / mmdetection#6166)
    small = multiclass_nms(boxes[:, :5], scores[:, :5], max_det=25, pre_nms_topk=1000)
    assert small.boxes.shape == (3, 25, 4) and int(small.num_dets.max()) <= 5 * 6


def test_detectors_are_registered_with_their_class_names():
    import tinyvim_deploy as tv

    assert {"tinyvim-s-det", "tinyvim-b-det"} <= set(tv.list_models())
    spec = tv.get_spec("tinyvim-s-det")
    assert spec.task == "detection" and spec.class_names == ("disk", "ring", "square", "triangle", "cross", "diamond")
