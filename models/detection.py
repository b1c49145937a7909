"""Deployable TinyViM detectors (``tinyvim-s-det`` student, ``tinyvim-b-det`` teacher).

The network: TinyViM dense backbone, stages 2–4 (strides 8/16/32) -> FPN P3–P5 (1×1 laterals, nearest
top-down sums, 3×3 Conv-BN-ReLU outputs) -> FCOS-style point head (separate cls/reg towers of 3×3
Conv-BN-ReLU, convs shared across levels, BN per level, learnable per-level box scale, centerness on the
reg tower) -> decode inside the graph: ``boxes [B,N,4]`` x1y1x2y2 in input pixels and
``scores [B,N,C] = sqrt(sigmoid(cls) · sigmoid(ctr))``.

The network ends at (boxes, scores). Around it, elsewhere:

- the reference NMS and the fixed-K output contract: :mod:`tinyvim_deploy.tasks.nms`
  (:class:`DetectorWithNMS` below wraps a detector with it);
- the per-backend NMS attached at export (ONNX ``NonMaxSuppression``, ``EfficientNMS_TRT``, Core ML):
  :mod:`tinyvim_deploy.export.nms`;
- the training losses (ATSS assignment, focal / GIoU / centerness-BCE): :mod:`tinyvim_deploy.training.losses`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvim_deploy.models.registry import SHAPESDET_CLASSES, ModelSpec, register_model
from tinyvim_deploy.tasks.nms import Detections, multiclass_nms

# isort: split
# Moved to tinyvim_deploy.tasks.nms; re-exported (with the two above) until every caller imports them from there.
from tinyvim_deploy.tasks.nms import box_iou, nms  # noqa: F401

__all__ = [
    "DETECTOR_CONFIGS",
    "SHAPESDET_CLASSES",
    "DetectorConfig",
    "DetectionFPN",
    "FCOSHead",
    "TinyViMDetector",
    "DetectorWithNMS",
    "make_points",
    "flatten_levels",
    "decode",
]

# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    backbone: str  # a registered TinyViM variant, built with features_only=True
    channels: int  # FPN width C, also the tower width
    tower_depth: int  # Conv-BN-ReLU layers per tower
    num_classes: int = len(SHAPESDET_CLASSES)
    extra_p6: bool = False  # a stride-2 P6, worth it only for inputs above 512
    prior_prob: float = 0.01  # focal-loss bias init of the classifier (FCOS/RetinaNet)

    @property
    def strides(self) -> tuple[int, ...]:
        return (8, 16, 32, 64) if self.extra_p6 else (8, 16, 32)


DETECTOR_CONFIGS = {
    "s": DetectorConfig(backbone="tinyvim-s", channels=64, tower_depth=2),  # student
    "b": DetectorConfig(backbone="tinyvim-b", channels=128, tower_depth=4),  # teacher
}

# --------------------------------------------------------------------------------------------------
# Network
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
    """``depth`` 3×3 convs shared by all levels, each followed by the *level's own* BN and a ReLU.

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
    clips after un-letterboxing. Score = sqrt(sigmoid(cls)·sigmoid(ctr)) keeps it a probability-like value
    on the classifier's scale, so one score threshold serves all backends.
    """
    xy = points.unsqueeze(0)
    boxes = torch.cat((xy - distances[..., :2], xy + distances[..., 2:]), dim=-1)
    scores = torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(ctr_logits))
    return boxes, scores


class TinyViMDetector(nn.Module):
    """image [B,3,H,W] -> (boxes [B,N,4] x1y1x2y2 input pixels, scores [B,N,C]); H, W multiples of 32.

    N = Σ (H/s)(W/s) over the strides (2100 at 320²). ``features`` (the FPN maps DRKD distils) and
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
        return self.neck(self.backbone(x)[1:])  # stage 1 (stride 4) is not used: P3–P5 start at stride 8

    def forward_raw(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cls_maps, box_maps, ctr_maps = self.forward_raw(x)
        points = make_points([tuple(m.shape[-2:]) for m in cls_maps], self.strides, box_maps[0])
        return decode(points, flatten_levels(box_maps), flatten_levels(cls_maps), flatten_levels(ctr_maps))


# --------------------------------------------------------------------------------------------------
# The PyTorch reference with NMS (what the exported NMS backends are compared against)
# --------------------------------------------------------------------------------------------------


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
# Registered detectors
# --------------------------------------------------------------------------------------------------

DET_INPUT = 320  # deploy default 320×320, letterbox (keep ratio, pad), ImageNet mean/std

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
