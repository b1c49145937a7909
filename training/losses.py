"""Training losses of the deployable detectors: ATSS assignment, focal, GIoU and centerness-BCE losses.

They train :class:`~tinyvim_deploy.models.detection.TinyViMDetector` from its per-level head outputs
(:meth:`~tinyvim_deploy.models.detection.TinyViMDetector.forward_raw`) and never reach an exported graph;
the weighting is mmdet's ATSS recipe (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via ATSS", CVPR 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tinyvim_deploy.models.detection import flatten_levels, make_points
from tinyvim_deploy.tasks.nms import box_iou

__all__ = ["atss_assign", "detection_loss"]


@torch.no_grad()
def atss_assign(points: Tensor, level_sizes: Sequence[int], strides: Sequence[int], gt_boxes: Tensor,
                topk: int = 9, anchor_scale: float = 8.0) -> Tensor:
    """ATSS (Zhang et al. 2020) for one image: index of the assigned GT per point, −1 for background.

    Each point carries one square "anchor" of side ``anchor_scale``·stride. Per GT: the ``topk`` points per level
    nearest to its centre are candidates; positives are candidates with IoU ≥ mean + std (unbiased, as mmdet) of the
    candidates' IoUs whose point lies inside the box (margin 0.01 px); a point claimed by several GTs takes the one
    with the highest IoU.
    """
    n, m = points.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=points.device)
    if m == 0:
        return assigned
    half = torch.cat([points.new_full((size, 1), anchor_scale * s / 2) for size, s in zip(level_sizes, strides)])
    ious = box_iou(torch.cat((points - half, points + half), dim=1), gt_boxes)  # [N, M]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(points, gt_centres)  # [N, M]
    candidates, start = [], 0
    for size in level_sizes:
        k = min(topk, size)
        candidates.append(dist[start:start + size].topk(k, dim=0, largest=False).indices + start)
        start += size
    cand = torch.cat(candidates)  # [K, M]
    cand_ious = ious.gather(0, cand)
    std = cand_ious.std(dim=0) if cand.shape[0] > 1 else torch.zeros_like(cand_ious[0])
    is_pos = cand_ious >= cand_ious.mean(dim=0) + std
    xy = points[cand]  # [K, M, 2]
    inside = torch.cat((xy - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - xy), dim=-1).amin(dim=-1) > 0.01
    overlaps = torch.full_like(ious, -1.0)
    cols = torch.arange(m, device=points.device).expand_as(cand)
    keep = is_pos & inside
    overlaps[cand[keep], cols[keep]] = cand_ious[keep]
    best, arg = overlaps.max(dim=1)
    return torch.where(best >= 0, arg, assigned)


def _giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 − GIoU of aligned [n,4] x1y1x2y2 pairs."""
    lt, rb = torch.maximum(pred[:, :2], target[:, :2]), torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_p, area_t = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(1), (target[:, 2:] - target[:, :2]).prod(1)
    union = (area_p + area_t - inter).clamp(min=1e-6)
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(1).clamp(min=1e-6)
    return 1 - (inter / union - (hull - union) / hull)


def detection_loss(cls_maps: Sequence[Tensor], box_maps: Sequence[Tensor], ctr_maps: Sequence[Tensor],
                   strides: Sequence[int], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                   alpha: float = 0.25, gamma: float = 2.0, giou_weight: float = 2.0,
                   reduce_mean: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """ATSS losses on :meth:`TinyViMDetector.forward_raw` outputs; GT boxes in input pixels, one tensor per image.

    mmdet ATSS weighting: focal loss (α 0.25, γ 2) summed over all points and classes / #positives; GIoU (weight 2)
    on positives weighted by their centerness target / Σ targets; centerness BCE / #positives.
    ``reduce_mean`` averages those two normalisers over data-parallel processes (mmdet's ``reduce_mean``), so
    W processes with averaged gradients train exactly like one process with their whole batch.
    """
    reduce_mean = reduce_mean or (lambda t: t)
    cls, dist, ctr = flatten_levels(cls_maps), flatten_levels(box_maps), flatten_levels(ctr_maps).squeeze(-1)
    sizes = [m.shape[-2] * m.shape[-1] for m in cls_maps]
    points = make_points([tuple(m.shape[-2:]) for m in cls_maps], strides, dist)
    cls_target = torch.zeros_like(cls)
    pos_img, pos_pt, pos_box = [], [], []
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        assigned = atss_assign(points, sizes, strides, boxes)
        idx = torch.nonzero(assigned >= 0).squeeze(1)
        cls_target[b, idx, labels[assigned[idx]]] = 1.0
        pos_img.append(torch.full_like(idx, b))
        pos_pt.append(idx)
        pos_box.append(boxes[assigned[idx]])
    pos_img, pos_pt, pos_box = torch.cat(pos_img), torch.cat(pos_pt), torch.cat(pos_box)
    num_pos = reduce_mean(pos_pt.new_tensor(float(pos_pt.numel()), dtype=cls.dtype)).clamp(min=1.0)
    loss_cls = _sigmoid_focal(cls, cls_target, alpha, gamma).sum() / num_pos
    if pos_pt.numel() == 0:  # keep the graph connected so every head parameter still gets a (zero) gradient
        zero = dist.sum() * 0 + ctr.sum() * 0
        reduce_mean(zero.detach())  # every process joins the same collectives, positives or not
        return {"cls": loss_cls, "box": zero, "centerness": zero}
    xy = points[pos_pt]
    ltrb = torch.cat((xy - pos_box[:, :2], pos_box[:, 2:] - xy), dim=1)
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
    ctr_target = torch.sqrt((lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1)))
    d = dist[pos_img, pos_pt]
    pred_boxes = torch.cat((xy - d[:, :2], xy + d[:, 2:]), dim=1)
    ctr_norm = reduce_mean(ctr_target.sum().detach()).clamp(min=1e-6)
    loss_box = giou_weight * (_giou_loss(pred_boxes, pos_box) * ctr_target).sum() / ctr_norm
    loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos_img, pos_pt], ctr_target, reduction="sum") / num_pos
    return {"cls": loss_cls, "box": loss_box, "centerness": loss_ctr}


def _sigmoid_focal(logits: Tensor, target: Tensor, alpha: float, gamma: float) -> Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** gamma * ce
