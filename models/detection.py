"""Deployable TinyViM detectors (``tinyvim-s-det`` student, ``tinyvim-b-det`` teacher) and a reference NMS.

Written from ``shared/specs/drkd.md`` §7.2–§7.3 (section numbers below refer to it):

- the network (§7.2): TinyViM dense backbone, stages 2–4 (strides 8/16/32) -> FPN P3–P5 (1×1 laterals,
  nearest top-down sums, 3×3 Conv-BN-ReLU outputs) -> FCOS-style point head (separate cls/reg towers of
  3×3 Conv-BN-ReLU, convs shared across levels, BN per level, learnable per-level box scale, centerness on
  the reg tower) -> decode inside the graph: ``boxes [B,N,4]`` x1y1x2y2 in input pixels and
  ``scores [B,N,C] = sqrt(sigmoid(cls) · sigmoid(ctr))``;
- training-only parts (§7.2): ATSS assignment and the focal / GIoU / centerness-BCE losses;
- the PyTorch NMS reference (§7.3): class-aware, suppression when IoU is *strictly greater* than the
  threshold (ONNX semantics), order by score then index, and the fixed-K output contract
  ``num_dets [B,1] int32, boxes [B,K,4] float32, scores [B,K] float32, classes [B,K] int32``.

No torchvision (§7.3: the reachable wheels are CUDA builds). The network itself ends at (boxes, scores):
the per-backend NMS (ONNX ``NonMaxSuppression``, ``EfficientNMS_TRT``, CoreML) is attached at export;
:class:`DetectorWithNMS` is the PyTorch reference those are compared against.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvim_deploy.models.registry import LABEL_SETS, ModelSpec, register_model

__all__ = [
    "DETECTOR_CONFIGS",
    "SHAPESDET_CLASSES",
    "DetectorConfig",
    "DetectionFPN",
    "FCOSHead",
    "Detections",
    "TinyViMDetector",
    "DetectorWithNMS",
    "make_points",
    "decode",
    "box_iou",
    "nms",
    "multiclass_nms",
    "atss_assign",
    "detection_loss",
]

# --------------------------------------------------------------------------------------------------
# Configurations (§7.2)
# --------------------------------------------------------------------------------------------------

# §7.5's synthetic set, the only data the spec trains these detectors on; the class count is a constructor argument.
SHAPESDET_CLASSES = ("disk", "ring", "square", "triangle", "cross", "diamond")
LABEL_SETS.setdefault("shapesdet", lambda: SHAPESDET_CLASSES)  # the synthetic set the detectors train on


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    backbone: str  # a registered TinyViM variant, built with features_only=True
    channels: int  # FPN width C, also the tower width
    tower_depth: int  # Conv-BN-ReLU layers per tower
    num_classes: int = len(SHAPESDET_CLASSES)
    extra_p6: bool = False  # §7.2: a stride-2 P6 only when inputs above 512 are targeted
    prior_prob: float = 0.01  # focal-loss bias init of the classifier (FCOS/RetinaNet)

    @property
    def strides(self) -> tuple[int, ...]:
        return (8, 16, 32, 64) if self.extra_p6 else (8, 16, 32)


DETECTOR_CONFIGS = {
    "s": DetectorConfig(backbone="tinyvim-s", channels=64, tower_depth=2),  # student
    "b": DetectorConfig(backbone="tinyvim-b", channels=128, tower_depth=4),  # teacher
}

# --------------------------------------------------------------------------------------------------
# Network (§7.2)
# --------------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """k×k conv without bias -> BatchNorm -> ReLU (keys ``0``, ``1``; the BN folds into the conv at export)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DetectionFPN(nn.Module):
    """FPN P3–P5 (optionally P6): 1×1 laterals -> nearest top-down sums -> 3×3 Conv-BN-ReLU outputs."""

    def __init__(self, in_channels: Sequence[int], channels: int, extra_p6: bool = False):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels) for _ in in_channels)
        self.p6 = ConvBNReLU(channels, channels, stride=2) if extra_p6 else None  # from P5's output (FCOS style)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            # target size from the finer map's shape, like models/semantic_fpn.py: stays relative on export
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        if self.p6 is not None:
            outs.append(self.p6(outs[-1]))
        return outs


class Scale(nn.Module):
    """One learnable scalar (mmcv ``Scale``): lets each level rescale the shared box regressor."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Tower(nn.Module):
    """``depth`` 3×3 convs shared by all levels, each followed by the *level's own* BN and a ReLU (§7.2).

    Per-level BN keeps the per-level statistics apart (P3 and P5 activations differ a lot) at the cost of a few
    hundred parameters; at export each level's BN folds into its own copy of the shared conv.
    """

    def __init__(self, channels: int, depth: int, num_levels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(depth))
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(depth)) for _ in range(num_levels)
        )

    def forward(self, x: Tensor, level: int) -> Tensor:
        for conv, norm in zip(self.convs, self.norms[level]):
            x = F.relu(norm(conv(x)))
        return x


class FCOSHead(nn.Module):
    """FCOS-style anchor-free point head: per level, cls logits, ltrb distances in pixels, centerness logit.

    Distances are ``ReLU(scale_l · reg) · stride`` (FCOS ``norm_on_bbox``): the shared regressor predicts in units
    of the level's stride, so the same weights serve every level. Centerness sits on the reg tower (FCOS v2/ATSS).
    """

    def __init__(self, channels: int, num_classes: int, depth: int, strides: Sequence[int], prior_prob: float = 0.01):
        super().__init__()
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.cls_tower = Tower(channels, depth, len(self.strides))
        self.reg_tower = Tower(channels, depth, len(self.strides))
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # start every class at `prior_prob` so the focal loss is not swamped by easy negatives (RetinaNet §4.1)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: cls [B,C,H,W], distances [B,4,H,W] (pixels, ≥ 0), centerness logit [B,1,H,W]."""
        cls_out, box_out, ctr_out = [], [], []
        for level, (x, stride) in enumerate(zip(features, self.strides)):
            c = self.cls_tower(x, level)
            r = self.reg_tower(x, level)
            cls_out.append(self.cls_logits(c))
            box_out.append(F.relu(self.scales[level](self.bbox_pred(r))) * stride)
            ctr_out.append(self.centerness(r))
        return cls_out, box_out, ctr_out


def make_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int], like: Tensor) -> Tensor:
    """[N, 2] (x, y) centres of every output cell, levels concatenated, row-major: ((j + 0.5)·s, (i + 0.5)·s).

    The cell centre (not its corner) so boxes are symmetric about the pixels a point sees.
    """
    points = []
    for (h, w), stride in zip(sizes, strides):
        ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) * stride
        xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1))
    return torch.cat(points, dim=0)


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """[B, K, H_l, W_l] per level -> [B, ΣH_l·W_l, K] in :func:`make_points` order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def decode(points: Tensor, distances: Tensor, cls_logits: Tensor, ctr_logits: Tensor) -> tuple[Tensor, Tensor]:
    """points [N,2], distances [B,N,4] (l,t,r,b), cls [B,N,C], ctr [B,N,1] -> boxes [B,N,4], scores [B,N,C].

    Boxes are not clipped: with a letterbox the valid region is smaller than the input anyway, so the Predictor
    clips after un-letterboxing. Score = sqrt(sigmoid(cls)·sigmoid(ctr)) (§7.2) keeps it a probability-like value
    on the classifier's scale, so one score threshold serves all backends.
    """
    xy = points.unsqueeze(0)
    boxes = torch.cat((xy - distances[..., :2], xy + distances[..., 2:]), dim=-1)
    scores = torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits))
    return boxes, scores


class TinyViMDetector(nn.Module):
    """image [B,3,H,W] -> (boxes [B,N,4] x1y1x2y2 input pixels, scores [B,N,C]); H, W multiples of 32.

    N = Σ (H/s)(W/s) over the strides (2100 at 320²). ``features`` (the FPN maps, DRKD's hook, §1) and
    ``forward_raw`` (per-level head outputs, for the losses) are the training entry points.
    """

    def __init__(self, config: DetectorConfig, backbone: nn.Module | None = None):
        super().__init__()
        from tinyvim_deploy.models.registry import get_constructor

        self.config = config
        self.strides = config.strides
        self.num_classes = config.num_classes
        self.backbone = backbone if backbone is not None else get_constructor(config.backbone)(features_only=True)
        self.neck = DetectionFPN(self.backbone.embed_dims[1:], config.channels, config.extra_p6)
        self.head = FCOSHead(config.channels, config.num_classes, config.tower_depth, self.strides, config.prior_prob)

    def features(self, x: Tensor) -> list[Tensor]:
        return self.neck(self.backbone(x)[1:])  # stage 1 (stride 4) is not used (§7.2)

    def forward_raw(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cls_maps, box_maps, ctr_maps = self.forward_raw(x)
        points = make_points([tuple(m.shape[-2:]) for m in cls_maps], self.strides, box_maps[0])
        return decode(points, flatten_levels(box_maps), flatten_levels(cls_maps), flatten_levels(ctr_maps))


# --------------------------------------------------------------------------------------------------
# NMS reference and the fixed-K contract (§7.3)
# --------------------------------------------------------------------------------------------------


class Detections(NamedTuple):
    """§7.3's contract. Only the first ``num_dets[b]`` rows of image b are detections; the rest is padding
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
    """boxes [B,N,4], scores [B,N,C] -> the fixed-K contract (§7.3), K = ``max_det``.

    Same steps as the ONNX subgraph §7.3 plans, so the backends can be checked against it:
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


class DetectorWithNMS(nn.Module):
    """A detector whose output is the fixed-K contract (PyTorch reference; not meant to be traced)."""

    def __init__(self, detector: nn.Module, score_threshold: float = 0.05, iou_threshold: float = 0.6,
                 max_det: int = 100, pre_nms_topk: int = 1000):
        super().__init__()
        self.detector = detector
        self.spec = getattr(detector, "spec", None)
        self.nms_args = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, max_det=max_det,
                             pre_nms_topk=pre_nms_topk)

    def forward(self, x: Tensor) -> Detections:
        return multiclass_nms(*self.detector(x), **self.nms_args)


# --------------------------------------------------------------------------------------------------
# Training only: ATSS assignment and losses (§7.2)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Registered detectors (§7.2)
# --------------------------------------------------------------------------------------------------

DET_INPUT = 320  # §7.2: deploy default 320×320, letterbox (keep ratio, pad), ImageNet mean/std

_TINYVIM = "Ma et al., TinyViM: Frequency Decoupling for Tiny Hybrid Vision Mamba, ICCV 2025"
_ATSS = "Zhang et al., Bridging the Gap Between Anchor-based and Anchor-free Detection via ATSS, CVPR 2020"
_DRKD = "Ni et al., Dual Relation Knowledge Distillation for Object Detection, IJCAI 2023"


def _register(variant: str, params: int, macs: int, paper: str) -> None:
    spec = ModelSpec(
        name=f"tinyvim-{variant}-det", family="tinyvim+fcos", task="detection", input_size=(3, DET_INPUT, DET_INPUT),
        crop_pct=1.0, interpolation="bilinear", num_classes=DETECTOR_CONFIGS[variant].num_classes, labels="shapesdet",
        params=params, macs=macs, size_multiple=32, test_scale=(DET_INPUT, DET_INPUT), resize_mode="letterbox",
        paper=paper,
    )

    @register_model(spec)
    def constructor(num_classes: int = spec.num_classes, **_) -> nn.Module:
        return TinyViMDetector(dataclasses.replace(DETECTOR_CONFIGS[variant], num_classes=num_classes))


# params as built; MACs at 320² with 6 classes (torch FlopCounterMode / 2, BN unfused, scan not counted)
_register("s", 5_755_338, 2_303_105_600, f"{_TINYVIM}; {_ATSS}; {_DRKD} (student)")
_register("b", 12_472_922, 5_912_841_600, f"{_TINYVIM}; {_ATSS} (DRKD teacher)")
