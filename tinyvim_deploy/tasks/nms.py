"""The detection task's reference post-processing: class-aware NMS and the fixed-K output contract.

Every exported NMS (:mod:`tinyvim_deploy.export.nms`: ONNX ``NonMaxSuppression``, TensorRT's
``EfficientNMS_TRT``, Core ML's ``NonMaximumSuppression``) is checked against :func:`multiclass_nms`,
and the Predictor runs it on the raw ``boxes`` / ``scores`` of a detector exported without NMS.

Rules, chosen to match ONNX ``NonMaxSuppression`` so that the ONNX subgraph reproduces them exactly:
class-aware suppression, a pair suppresses when its IoU is *strictly greater* than the threshold, a
(box, class) pair is a candidate when its score is *strictly above* the score threshold, and ties are
ordered by score, then by index. The output is the fixed-K contract ``num_dets [B,1] int32,
boxes [B,K,4] float32, scores [B,K] float32, classes [B,K] int32`` (:class:`Detections`).

Plain torch, no torchvision: the torchvision wheels reachable for the target machines are CUDA builds.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Detections", "box_iou", "nms", "multiclass_nms"]


class Detections(NamedTuple):
    """The fixed-K contract. Only the first ``num_dets[b]`` rows of image b are detections; the rest is padding
    (zeros, class −1 here; other backends pad differently, so consumers must read ``num_dets``)."""

    num_dets: Tensor  # [B, 1] int32
    boxes: Tensor  # [B, K, 4] float32, x1y1x2y2 in network-input pixels
    scores: Tensor  # [B, K] float32, descending
    classes: Tensor  # [B, K] int32


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[n,4] × [m,4] x1y1x2y2 -> [n,m] IoU; 0 where the union is empty (ORT's rule for degenerate boxes)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def _score_order(scores: Tensor) -> Tensor:
    """Indices by score descending, ties by index ascending (stable sort)."""
    return torch.sort(scores, descending=True, stable=True).indices


def _greedy_nms_sorted(boxes: Tensor, iou_threshold: float) -> Tensor:
    """Keep mask of greedy NMS on boxes already in priority order, with matrices instead of a box-by-box loop.

    keep[i] = no kept j < i has IoU(j, i) > threshold. That system is triangular, so iterating
    keep ← f(keep) from all-True fixes one more leading element per pass and its fixed point is the unique greedy
    answer; it converges after (longest suppression chain + 1) passes, usually a handful, never more than n + 1.
    """
    n = boxes.shape[0]
    suppresses = (box_iou(boxes, boxes) > iou_threshold).triu(diagonal=1)  # [j, i]: j outranks i and overlaps it
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    for _ in range(n + 1):
        new = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, classes: Tensor | None = None) -> Tensor:
    """Indices of the kept boxes, by score descending then index ascending (torchvision ``batched_nms`` order).

    Class-aware when ``classes`` is given: each class is suppressed on its own (no coordinate-offset trick, whose
    float rounding could move an IoU across the threshold), so boxes of different classes never suppress each other.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    groups = [torch.arange(boxes.shape[0], device=boxes.device)] if classes is None else [
        torch.nonzero(classes == c).squeeze(1) for c in torch.unique(classes)
    ]
    kept = []
    for idx in groups:
        idx = idx[_score_order(scores[idx])]
        kept.append(idx[_greedy_nms_sorted(boxes[idx], iou_threshold)])
    keep = torch.cat(kept)
    keep = keep.sort().values  # index order first, so the stable score sort breaks ties by index
    return keep[_score_order(scores[keep])]


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.6,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
) -> Detections:
    """boxes [B,N,4], scores [B,N,C] -> the fixed-K contract, K = ``max_det``.

    The same steps as the ONNX subgraph (:func:`~tinyvim_deploy.export.nms.append_onnx_nms`), so that the
    exported backends can be checked against it:
    1. keep the ``min(pre_nms_topk, N)`` boxes with the highest max-over-classes score (a constant K, clamped);
    2. every (box, class) pair with score *strictly above* ``score_threshold`` is a candidate (one box may be
       kept for several classes, as in ONNX NonMaxSuppression / EfficientNMS_TRT);
    3. class-aware NMS, IoU strictly greater than ``iou_threshold`` suppresses;
    4. the ``max_det`` best survivors by score; ties by flat index class·N + box ("scatter then TopK");
    5. pad to K (boxes 0, scores 0, classes −1).
    """
    batch, n, num_classes = scores.shape
    k_pre = min(pre_nms_topk, n)
    out_boxes = boxes.new_zeros(batch, max_det, 4, dtype=torch.float32)
    out_scores = scores.new_zeros(batch, max_det, dtype=torch.float32)
    out_classes = torch.full((batch, max_det), -1, dtype=torch.int32, device=scores.device)
    num_dets = torch.zeros(batch, 1, dtype=torch.int32, device=scores.device)
    for b in range(batch):  # reference path: a per-image loop is fine here (the exported graphs batch it)
        top = _score_order(scores[b].max(dim=1).values)[:k_pre].sort().values  # box-index order for tie-breaks
        cand_scores = scores[b, top].t()  # [C, k_pre]: class-major, so flat index = class·k_pre + position
        cls_idx, pos = torch.nonzero(cand_scores > score_threshold, as_tuple=True)
        flat_scores = cand_scores[cls_idx, pos]
        cand_boxes = boxes[b, top[pos]]
        keep = nms(cand_boxes, flat_scores, iou_threshold, cls_idx)[:max_det]
        count = keep.numel()
        num_dets[b, 0] = count
        out_boxes[b, :count] = cand_boxes[keep].float()
        out_scores[b, :count] = flat_scores[keep].float()
        out_classes[b, :count] = cls_idx[keep].to(torch.int32)
    return Detections(num_dets, out_boxes, out_scores, out_classes)
