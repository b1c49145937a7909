"""Semantic FPN decoder (Kirillov et al., 2019) as TinyViM's official ADE20K segmentors use it.

Written from ``shared/specs/semantic_fpn.md``: the mmseg ``FPN`` neck (§4, keys ``neck.*``) and the ``FPNHead``
decode head (§5, keys ``decode_head.*``), wired as in §1. Module names follow mmseg/mmcv (``ConvModule`` with
``conv``/``bn`` children) so official checkpoints load with ``strict=True`` once the ``backbone.*`` keys are
handled by :class:`~tinyvim_deploy.models.tinyvim.TinyViM` (``features_only=True``).

Outputs are bit-identical to the official modules (§9, fixture README). The one deliberate difference is how
the head's 2× upsamplers get their size (§10 #1, §11 #5): mmseg computes it with Python ``int()``, which a
tracer freezes; here it is ``scale_factor=2``, which gives the same numbers and stays relative on export.
Every other resize takes its target size from a tensor's shape, as the official code does.

The segmentor-level resizes (stride-4 logits → network input size → original image size, §8) are not part of
these modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvModule", "Upsample2x", "FPNNeck", "FPNHead", "SemanticFPNDecoder"]


class ConvModule(nn.Module):
    """mmcv ``ConvModule`` subset: Conv2d (``conv``), optionally followed by BatchNorm2d (``bn``) and ReLU.

    Without a norm the conv carries a bias (the neck, §11 #1); with one it has none (the head).
    """

    def __init__(self, cin: int, cout: int, kernel: int, norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else None  # eps 1e-5; SyncBN in training, same keys
        self.activate = nn.ReLU(inplace=True) if norm else None  # the neck has no activation (§11 #2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.activate(self.bn(x))
        return x


class Upsample2x(nn.Module):
    """Bilinear 2× upsampling (mmseg ``Upsample(scale_factor=2)``, align_corners False); owns no keys.

    mmseg resizes to ``(int(2h), int(2w))``. A fixed factor of 2 gives the same output size and the same
    source coordinates (PyTorch then uses 1/scale_factor = 0.5 = in/out), hence identical values, but an
    exported graph keeps the size relative to its input instead of baking in the trace-time size (§10 #1).
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FPNNeck(nn.Module):
    """mmseg ``FPN``: 1×1 lateral convs, nearest top-down sums, 3×3 output convs (§4).

    Only the configuration TinyViM uses (§2): every input level is an output level (``num_outs`` equals the
    number of inputs), no extra levels, no norm, no activation.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in self.in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3) for _ in self.in_channels)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """mmseg's FPN init (Xavier-uniform convs, zero bias); only matters for training from scratch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPNNeck expects {len(self.in_channels)} feature maps, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        # Top-down cascade: each level adds the already-summed coarser level. The target size is the finer
        # map's own shape (not 2×), so odd pyramids (e.g. 125 ← 63) use the legacy nearest rule
        # floor(dst · in/out) like the official code; 'nearest-exact' would differ there.
        for i in range(len(laterals) - 1, 0, -1):
            top_down = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + top_down
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class FPNHead(nn.Module):
    """mmseg ``FPNHead``: per-level conv/upsample towers to stride 4, summed, then a 1×1 classifier (§5).

    Level i (stride s_i) gets max(1, log2(s_i / s_0)) Conv3×3-BN-ReLU units, each followed by a 2× bilinear
    upsampler for i ≥ 1, so every level lands on (roughly) the stride-4 grid. ``in_channels`` is the neck width.
    """

    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 128,
        num_classes: int = 150,
        feature_strides: Sequence[int] = (4, 8, 16, 32),
        dropout_ratio: float = 0.1,
    ):
        super().__init__()
        if list(feature_strides) != sorted(feature_strides):
            raise ValueError(f"feature_strides must be increasing, got {tuple(feature_strides)}")
        self.feature_strides = tuple(feature_strides)
        self.num_classes = num_classes
        # Registration order matters for the key order: BaseDecodeHead registers conv_seg (and the key-less
        # dropout) before FPNHead adds scale_heads (§5, §7).
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(self.feature_strides):
            length = max(1, int(math.log2(stride) - math.log2(self.feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(length):
                layers.append(ConvModule(in_channels if k == 0 else channels, channels, 3, norm=True))
                if i > 0:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """mmcv/mmseg defaults (Kaiming convs, unit BN, N(0, 0.01) classifier); checkpoints overwrite them."""
        for m in self.scale_heads.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.scale_heads):
            raise ValueError(f"FPNHead expects {len(self.scale_heads)} feature maps, got {len(features)}")
        y = self.scale_heads[0](features[0])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            # Always resize, even when the sizes already agree (then it is an exact identity): a shape-dependent
            # skip would be frozen by tracing and break dynamic-shape exports at sizes that need it (§10 #4).
            y = y + F.interpolate(head(f), size=y.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(y))


class SemanticFPNDecoder(nn.Module):
    """FPN neck + FPN head: 4 backbone maps (strides 4/8/16/32) → logits at stride 4.

    Children are named ``neck`` and ``decode_head`` so the state_dict keys match the official segmentor's
    non-backbone keys (§7). For an H×W image the output is [B, num_classes, ceil(H/4), ceil(W/4)].
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int = 150,
        neck_channels: int = 256,
        channels: int = 128,
        feature_strides: Sequence[int] = (4, 8, 16, 32),
        dropout_ratio: float = 0.1,
    ):
        super().__init__()
        if len(in_channels) != len(feature_strides):
            raise ValueError(f"{len(in_channels)} input widths but {len(feature_strides)} feature strides")
        self.neck = FPNNeck(in_channels, neck_channels)
        self.decode_head = FPNHead(neck_channels, channels, num_classes, feature_strides, dropout_ratio)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.decode_head(self.neck(features))
