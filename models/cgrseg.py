"""CGRSeg decode head (rectangular self-calibration + dynamic prototype guidance), and its SSA variant.

Written from ``shared/specs/cgrseg.md`` (section numbers below refer to it); state_dict keys are
the official head's (``decode_head.*`` inside an mmseg checkpoint), so official weights load with
``strict=True``. With ``classifier="ssa"`` the DPG part is replaced by the SSA classifier of
``shared/specs/ssa.md`` (``models/ssa.py``), as in the official ``CGRSeg_ssa`` head.

Export-minded choices, all numerically equivalent to the official module (§10, §12):
- the pyramid pooling uses ``avg_pool2d`` when the sizes divide, else two constant averaging
  matrices built from Python ints (the ONNX exporters refuse or mis-export adaptive pooling);
- RCA's axis pooling is a mean over one axis (``ReduceMean``), not adaptive pooling;
- every resize has an explicit target size taken from the feature it is added to.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Configurations (§2.1, §2.3)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CGRSegHeadConfig:
    in_channels: tuple[int, int, int]  # widths of the stride 8/16/32 maps
    channels: int = 128
    next_repeat: int = 5  # RCM blocks in the pyramid-context stack
    neck_size: int = 11  # band kernel of the stack
    dw_size: int = 11  # band kernel of the per-level blocks
    square_kernel_size: int = 3
    ratio: int = 1
    mlp_ratio: int = 2
    num_classes: int = 150


HEAD_CONFIGS = {  # the official T/B/L heads; in_channels come from the backbone they sit on
    "t": dict(channels=128, next_repeat=5, neck_size=11, dw_size=11),
    "b": dict(channels=256, next_repeat=6, neck_size=11, dw_size=11),
    "l": dict(channels=256, next_repeat=5, neck_size=9, dw_size=9),
}


# --------------------------------------------------------------------------------------------------
# Building blocks (§4)
# --------------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """1×1 conv without bias -> BatchNorm -> optional ReLU (mmcv ``ConvModule`` keys: ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, groups: int = 1, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


def hard_sigmoid(x: Tensor) -> Tensor:
    return F.relu6(x + 3.0) / 6.0


class RCA(nn.Module):
    """Rectangular self-calibration attention (§4.3): a band-conv gate on row+column means × a 3×3 dw conv."""

    def __init__(self, dim: int, band: int, square: int = 3, ratio: int = 1):
        super().__init__()
        g = dim // ratio
        self.dwconv_hw = nn.Conv2d(dim, dim, square, padding=square // 2, groups=dim)
        self.excite = nn.Sequential(
            nn.Conv2d(dim, g, (1, band), padding=(0, band // 2), groups=g),
            nn.BatchNorm2d(g),
            nn.ReLU(inplace=True),
            nn.Conv2d(g, dim, (band, 1), padding=(band // 2, 0), groups=g),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        local = self.dwconv_hw(x)
        # row means + column means: the "rectangular" context (official: adaptive pooling to (H,1), (1,W))
        context = x.mean(dim=3, keepdim=True) + x.mean(dim=2, keepdim=True)
        return self.excite(context) * local  # the gate comes from the block input, not from `local`


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RCM(nn.Module):
    """Rectangular self-calibration module (§4.4): x + gamma · MLP(BN(RCA(x)))."""

    def __init__(self, dim: int, band: int, square: int = 3, mlp_ratio: int = 2, ratio: int = 1):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # registered first: the official key order
        self.token_mixer = RCA(dim, band, square, ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(self.token_mixer(x))) * self.gamma.view(1, -1, 1, 1)


class PyramidContext(nn.Module):
    """``trans``: the RCM stack over the pooled concat of the three levels (§4.6)."""

    def __init__(self, dim: int, depth: int, band: int, square: int, mlp_ratio: int):
        super().__init__()
        self.transformer_blocks = nn.Sequential(*(RCM(dim, band, square, mlp_ratio) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.transformer_blocks(x)


class SIM(nn.Module):
    """Fusion of a level's local detail with its global context (§4.8, official ``FuseBlockMulti``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.fuse1 = ConvBN(cin, cout)
        self.fuse2 = ConvBN(cin, cout)

    def forward(self, local: Tensor, context: Tensor) -> Tensor:
        gate = hard_sigmoid(self.fuse2(context))  # at the low resolution, before upsampling
        return self.fuse1(local) * resize(gate, local.shape[2:])


class DPG(nn.Module):
    """Dynamic prototype guidance (§4.12, keys ``lgc.*``): a channel gate from attention-pooled class prototypes."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.channel_mul_conv = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            nn.LayerNorm([channels, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor, prototypes: Tensor) -> Tensor:
        """``prototypes`` [B, C, K, 1]; returns x · sigmoid(MLP(Σ_k softmax_k(w·q_k) q_k))."""
        b, c, k, _ = prototypes.shape
        weights = torch.softmax(self.conv_mask(prototypes).reshape(b, k, 1), dim=1)  # over the K classes
        pooled = torch.bmm(prototypes.reshape(b, c, k), weights).reshape(b, c, 1, 1)
        return x * torch.sigmoid(self.channel_mul_conv(pooled))


# --------------------------------------------------------------------------------------------------
# Shape helpers: exact, export-friendly equivalents of the official adaptive pooling and resizes
# --------------------------------------------------------------------------------------------------


def resize(x: Tensor, size) -> Tensor:
    """Bilinear, align_corners=False, to an explicit size (the official ``resize``)."""
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def _bin_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """[n_out, n_in] averaging matrix of adaptive pooling: row o averages floor(o·n/m) ≤ i < ceil((o+1)·n/m)."""
    m = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for o in range(n_out):  # Python ints only: traced shape arithmetic exported wrong values (spec §10.1)
        start, end = (o * n_in) // n_out, -(-((o + 1) * n_in) // n_out)
        m[o, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d`` as AveragePool (sizes divide) or two constant matrices (they do not)."""
    h_in, w_in = int(x.shape[2]), int(x.shape[3])
    h, w = size
    if h_in % h == 0 and w_in % w == 0:
        return F.avg_pool2d(x, kernel_size=(h_in // h, w_in // w))
    return _bin_matrix(h_in, h, x) @ x @ _bin_matrix(w_in, w, x).t()


# --------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------


class CGRSegHead(nn.Module):
    """CGRSeg decode head: 4 backbone maps (strides 4..32; stride 4 unused) -> stride-8 logits (§5).

    ``classifier="dpg"`` is the official ``CGRSeg`` head; ``"ssa"`` is ``CGRSeg_ssa`` (no ``lgc``,
    the SSA classifier on the ``linear_fuse`` output; its training-only weights are not registered:
    ``models.ssa.TRAINING_ONLY_KEYS``).
    """

    def __init__(self, config: CGRSegHeadConfig, classifier: str = "dpg"):
        super().__init__()
        if classifier not in ("dpg", "ssa"):
            raise ValueError(f"classifier must be 'dpg' or 'ssa', got {classifier!r}")
        cfg = self.config = config
        self.classifier = classifier
        c, k, s, m = cfg.channels, cfg.num_classes, cfg.square_kernel_size, cfg.mlp_ratio
        self.in_channels = list(cfg.in_channels)
        self.conv_seg = nn.Conv2d(c, k, 1)  # registered first by mmseg's base class
        self.dropout = nn.Dropout2d(0.1)
        self.linear_fuse = ConvBN(c, c, groups=c, relu=True)
        self.trans = PyramidContext(sum(self.in_channels), cfg.next_repeat, cfg.neck_size, s, m)
        self.SIM = nn.ModuleList(SIM(ci, c) for ci in self.in_channels)
        self.meta = nn.ModuleList(RCM(ci, cfg.dw_size, s, m, cfg.ratio) for ci in self.in_channels)
        self.conv = nn.ModuleList(nn.Conv2d(c, ci, 1) for ci in self.in_channels[:-1])
        if classifier == "dpg":
            self.lgc = DPG(c)
        else:
            from tinyvim_deploy.models.ssa import SSAClassifier

            SSAClassifier.add_to(self, c, k)

    def features(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(x, c): the SIM output at stride 8 and its ``linear_fuse`` (§4.5–4.10)."""
        f = list(feats[1:4])
        h2, w2 = int(f[2].shape[2]), int(f[2].shape[3])
        pooled_size = ((h2 - 1) // 2 + 1, (w2 - 1) // 2 + 1)
        pyramid = torch.cat([adaptive_avg_pool(t, pooled_size) for t in f], dim=1)
        contexts = torch.split(self.trans(pyramid), self.in_channels, dim=1)
        prev = None
        for i in (2, 1, 0):  # top-down reconstruction (§4.9)
            local = f[i] if prev is None else f[i] + self.conv[i](resize(prev, f[i].shape[2:]))
            prev = self.SIM[i](self.meta[i](local), contexts[i])
        return prev, self.linear_fuse(prev)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x, fused = self.features(feats)
        coarse = self.conv_seg(self.dropout(fused))
        if self.classifier == "ssa":
            from tinyvim_deploy.models.ssa import ssa_logits

            return ssa_logits(self, fused, coarse)
        b, k = coarse.shape[:2]
        # class prototypes (§4.11): softmax over positions of each coarse class map, pooling x (not c)
        attention = torch.softmax(coarse.reshape(b, k, -1), dim=2)
        prototypes = torch.bmm(attention, x.flatten(2).transpose(1, 2))  # [B, K, C]
        prototypes = prototypes.transpose(1, 2).unsqueeze(3)  # [B, C, K, 1]
        guided = self.lgc(x, prototypes) + x  # §4.13: x · (1 + s)
        return self.conv_seg(self.dropout(guided))  # conv_seg is shared with the coarse classifier
