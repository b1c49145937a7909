"""TinyViM: frequency-decoupled tiny hybrid vision Mamba (Ma et al., ICCV 2025).

Written from ``shared/specs/tinyvim.md``. Module and parameter names follow the official code so
official checkpoints load with ``strict=True``; the scan runs in pure PyTorch (``models/ops.py``).
Blocks first, then the model, then the registered variants.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvim_deploy.errors import InputSizeError
from tinyvim_deploy.models.ops import SelectiveScan, laplace_merge, laplace_split
from tinyvim_deploy.models.registry import ModelSpec, register_model

__all__ = ["TinyViM", "reparameterize", "check_input_size"]

D_STATE = 8
LOW_FREQ_RATIO = (0.25, 0.5, 0.5, 0.75)  # "frequency ramp": share of channels given to the scan
MLP_RATIO = 4


def _fuse_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv's weight and bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * scale


def _conv_from(conv: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        groups=conv.groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    fused.weight.data.copy_(weight)
    fused.bias.data.copy_(bias)
    return fused


class ConvNorm(nn.Sequential):
    """Bias-free Conv2d (``c``) followed by BatchNorm2d (``bn``)."""

    def __init__(self, cin: int, cout: int, kernel=1, stride=1, padding=0, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return _conv_from(self.c, *_fuse_bn(self.c.weight, None, self.bn))


class RepDW(nn.Module):
    """BN_outer(BN(DWk×k(x)) + DW1×1(x) + x): re-parameterisable depthwise conv (spec §3.1, §6.1).

    ``kernel`` is (kh, kw): (3, 3) for RepDW, (7, 1) / (1, 7) for the axial "inception" branches.
    The axial form registers ``conv1`` before ``conv`` (official key order), hence ``axial``.
    """

    def __init__(self, channels: int, kernel: tuple[int, int] = (3, 3), axial: bool = False):
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2)
        if axial:
            self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels)
            self.conv = ConvNorm(channels, channels, kernel, 1, padding, groups=channels)
        else:
            self.conv = ConvNorm(channels, channels, kernel, 1, padding, groups=channels)
            self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x) + self.conv1(x) + x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        inner = self.conv.fuse()
        kh, kw = inner.kernel_size
        centre = torch.zeros_like(inner.weight)
        centre[:, :, kh // 2, kw // 2] = self.conv1.weight[:, :, 0, 0] + 1.0  # 1×1 branch + identity
        weight, bias = _fuse_bn(inner.weight + centre, inner.bias + self.conv1.bias, self.bn)
        return _conv_from(inner, weight, bias)


class FFN(nn.Module):
    """1×1 Conv-BN → GELU → 1×1 Conv-BN."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = ConvNorm(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LocalBlock(nn.Module):
    """x + layer_scale ⊙ FFN(RepDW(x))."""

    def __init__(self, dim: int):
        super().__init__()
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.dwconv = RepDW(dim)
        self.mlp = FFN(dim, MLP_RATIO * dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layer_scale * self.mlp(self.dwconv(x))


class AxialInception(nn.Module):
    """First half of the channels through a 7×1 RepDW (``dwconv_w``), second half 1×7 (``dwconv_h``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.split = dim - int(dim * 0.5)
        g = int(dim * 0.5)
        self.dwconv_h = RepDW(g, (1, 7), axial=True)  # named "h" but 1 tall, 7 wide (official naming)
        self.dwconv_w = RepDW(g, (7, 1), axial=True)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.dwconv_w(x[:, : self.split]), self.dwconv_h(x[:, self.split :])], dim=1)


class LaplaceMixer(nn.Module):
    """The SS2D token mixer of a TViMBlock (spec §4–§6), keys ``op.*``.

    Channels are split after the axial convs: the first ``d_low`` go through the 4-direction
    selective scan on a P×P average-pooled map (the low-pass level of a one-step Laplacian pyramid;
    the band-pass residual is added back after upsampling), the rest through a 3×3 RepDW.
    """

    def __init__(self, dim: int, stage: int):
        super().__init__()
        self.d_low = int(dim * LOW_FREQ_RATIO[stage])
        self.pool_factor = 2 ** (3 - stage)  # 8, 4, 2 for stages 0–2; stage 3 scans its input directly
        self.dt_rank = math.ceil(dim / 16)
        k, d, n, r = 4, self.d_low, D_STATE, self.dt_rank
        # Scan parameters come first in the official state_dict (registered on the module itself).
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d, 1))
        self.Ds = nn.Parameter(torch.ones(k * d))
        self.local_conv = RepDW(dim - self.d_low)
        self.out_norm = nn.LayerNorm(d, eps=1e-5)
        self.in_proj = ConvNorm(dim, dim)
        self.conv2d = AxialInception(dim)
        self.out_proj = ConvNorm(dim, dim)
        self.selective_scan = SelectiveScan()  # no parameters: marks the scan's nodes in exported graphs
        self._init_scan_params()

    @torch.no_grad()
    def _init_scan_params(self) -> None:
        """Official init (spec §12); checkpoints overwrite it."""
        k, d, r = self.x_proj_weight.shape[0], self.d_low, self.dt_rank
        nn.init.uniform_(self.x_proj_weight, -(d**-0.5), d**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -(r**-0.5), r**-0.5)
        dt = torch.exp(torch.rand(k, d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def scan2d(self, x: Tensor) -> Tensor:
        """4-direction selective scan of a (B, D, h, w) map, merged and LayerNorm-ed (spec §4)."""
        b, d, h, w = x.shape
        L = h * w
        rows = x.flatten(2)  # row-major tokens
        cols = x.transpose(2, 3).flatten(2)  # column-major tokens
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (B, K, D, L)
        proj = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(proj, [self.dt_rank, D_STATE, D_STATE], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = self.selective_scan(
            xs.reshape(b, -1, L), dts.reshape(b, -1, L), -torch.exp(self.A_logs.float()),
            Bs.contiguous(), Cs.contiguous(), self.Ds.float(), self.dt_projs_bias.float(),
        ).view(b, 4, d, L)
        y_rows = y[:, 0] + y[:, 2].flip(-1)
        y_cols = (y[:, 1] + y[:, 3].flip(-1)).view(b, d, w, h).transpose(2, 3).reshape(b, d, L)
        out = self.out_norm((y_rows + y_cols).transpose(1, 2))  # (B, L, D)
        return out.view(b, h, w, d).permute(0, 3, 1, 2).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        t = F.silu(self.conv2d(self.in_proj(x)))
        t_low, t_high = t[:, : self.d_low], t[:, self.d_low :]
        high = self.local_conv(t_high)
        if self.pool_factor > 1 and self.d_low:
            pooled, band = laplace_split(t_low, self.pool_factor)
            low = laplace_merge(self.scan2d(pooled), band, self.pool_factor)
        else:
            low = self.scan2d(t_low)
        return self.out_proj(torch.cat([low, high], dim=1))


class TViMBlock(nn.Module):
    """x + LaplaceMixer(x), then x + FFN(x). No norm, no layer scale."""

    def __init__(self, dim: int, stage: int):
        super().__init__()
        self.op = LaplaceMixer(dim, stage)
        self.mlp = FFN(dim, MLP_RATIO * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.op(x)
        return x + self.mlp(x)


class Downsample(nn.Module):
    """3×3 stride-2 Conv-BN between stages (official class "Embedding")."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = ConvNorm(cin, cout, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def check_input_size(height: int, width: int, multiple: int = 32) -> None:
    """Raise :class:`InputSizeError` unless both sides are positive multiples of ``multiple``."""
    bad = [v for v in (height, width) if v <= 0 or v % multiple]
    if bad:
        near = [max(multiple, round(v / multiple) * multiple) for v in (height, width)]
        raise InputSizeError(
            f"Input size {height}x{width} is not supported: TinyViM needs height and width that are "
            f"multiples of {multiple}; the nearest valid size is {near[0]}x{near[1]}."
        )


class TinyViM(nn.Module):
    """TinyViM classifier, or its dense-prediction backbone with ``features_only=True``."""

    def __init__(
        self,
        embed_dims: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int = 1000,
        distillation: bool = True,
        features_only: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.features_only = features_only
        self.embed_dims = tuple(embed_dims)
        c0 = embed_dims[0]
        self.patch_embed = nn.Sequential(
            ConvNorm(3, c0 // 2, 3, 2, 1), nn.GELU(), ConvNorm(c0 // 2, c0, 3, 2, 1), nn.GELU()
        )
        network: list[nn.Module] = []
        for s, (dim, depth) in enumerate(zip(embed_dims, depths)):
            if s:
                network.append(Downsample(embed_dims[s - 1], dim))
            blocks = [
                TViMBlock(dim, s) if j == depth - 1 or (s == 2 and j == depth // 2) else LocalBlock(dim)
                for j in range(depth)
            ]
            network.append(nn.Sequential(*blocks))
        self.network = nn.ModuleList(network)

        if features_only:  # norm0/2/4/6: one BN per stage output, named after its network index
            for i, dim in zip((0, 2, 4, 6), embed_dims):
                self.add_module(f"norm{i}", nn.BatchNorm2d(dim))
        else:
            self.norm = nn.BatchNorm2d(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes else nn.Identity()
            self.dist_head = (
                (nn.Linear(embed_dims[-1], num_classes) if num_classes else nn.Identity()) if distillation else None
            )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor | list[Tensor]:
        check_input_size(x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        features = []
        for i, layer in enumerate(self.network):
            x = layer(x)
            if self.features_only and i % 2 == 0:
                features.append(getattr(self, f"norm{i}")(x))
        return features if self.features_only else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        x = self.norm(x).mean((2, 3))
        if pre_logits:
            return x
        if self.dist_head is None:
            return self.head(x)
        logits, dist = self.head(x), self.dist_head(x)
        return (logits, dist) if self.training else (logits + dist) / 2

    def forward(self, x: Tensor):
        x = self.forward_features(x)
        return x if self.features_only else self.forward_head(x)


@torch.no_grad()
def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Deploy form: every Conv-BN, RepDW and axial block folded into one conv (spec §8).

    Works on a copy unless ``inplace``; the result's outputs equal the original's up to rounding.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if hasattr(child, "fuse"):
            setattr(model, name, child.fuse())
        else:
            reparameterize(child, inplace=True)
    model.reparameterized = True
    return model


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------

_PAPER = "Ma et al., TinyViM: Frequency Decoupling for Tiny Hybrid Vision Mamba, ICCV 2025"
_VARIANTS = {
    # name: (embed_dims, depths, params as built, MACs at 224 unfused)
    "tinyvim-s": ((48, 64, 168, 224), (3, 3, 9, 6), 5_909_084, 926_763_600),
    "tinyvim-b": ((48, 96, 192, 384), (4, 3, 10, 5), 11_514_236, 1_502_571_744),
    "tinyvim-l": ((64, 128, 384, 512), (4, 4, 12, 6), 32_380_256, 4_742_492_928),
}


def _register(name: str, dims: tuple[int, ...], depths: tuple[int, ...], params: int, macs: int) -> None:
    spec = ModelSpec(name=name, family="tinyvim", task="classification", params=params, macs=macs, paper=_PAPER)

    @register_model(spec)
    def build(num_classes: int = 1000, features_only: bool = False, distillation: bool = True) -> TinyViM:
        return TinyViM(dims, depths, num_classes=num_classes, distillation=distillation, features_only=features_only)


for _name, (_dims, _depths, _params, _macs) in _VARIANTS.items():
    _register(_name, _dims, _depths, _params, _macs)
