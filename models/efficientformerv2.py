"""EfficientFormerV2 backbone as CGRSeg uses it (Li et al., ICCV 2023; Ni et al., CGRSeg, ECCV 2024).

Written from ``shared/specs/efficientformerv2.md``; section numbers (§) below refer to it. Module and
parameter names follow the official CGRSeg copy (``efficientformerv2_{s1,s2,l}_feat``) so the ``backbone.*``
part of an official CGRSeg checkpoint loads with ``strict=True`` (§12; minus the ``backbone.`` prefix).

Dense form only (§1): a conv stem and four stages of FFN / attention blocks; ``forward`` returns the raw
stride-4/8/16/32 stage outputs, with no extra norms (§11). The size-dependent part is the attention bias:
a table trained for 512×512 crops, gathered through a relative-position index and resized bicubically on the
*flattened* token axes to the actual token counts (§8.4). For fixed-size export it can be precomputed per
input size (:meth:`EfficientFormerV2.precompute_attention_biases`, §15). Blocks first, then the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvim_deploy.errors import InputSizeError

__all__ = ["EfficientFormerV2", "EfficientFormerV2Config", "VARIANTS", "check_input_size", "bias_index_table"]

NUM_HEADS = 8
TRAIN_RESOLUTION = 512  # CGRSeg's crop: sizes the live bias tables (§8.2–8.3)
IMAGENET_ATTN_GRID = 7  # the dead ImageNet leftovers of §8.1 (224 / 32); the downsample attention's keys: 14


@dataclass(frozen=True)
class EfficientFormerV2Config:
    """One backbone variant (§2.1). ``mlp_ratios[i][j]`` is the MLP ratio of block j of stage i."""

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    vit_num: int  # AttnFFN blocks at the end of stages 2 and 3
    mlp_ratios: tuple[tuple[int, ...], ...]
    drop_path_rate: float  # training only (official config value); identity at inference
    params: int  # counted parameters (excluding buffers), spec §2.1


VARIANTS: dict[str, EfficientFormerV2Config] = {
    "s1": EfficientFormerV2Config(  # CGRSeg-T
        widths=(32, 48, 120, 224), depths=(3, 3, 9, 6), vit_num=2,
        mlp_ratios=((4, 4, 4), (4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4, 4), (4, 4, 3, 3, 4, 4)),
        drop_path_rate=0.0, params=5_748_360,
    ),
    "s2": EfficientFormerV2Config(  # CGRSeg-B
        widths=(32, 64, 144, 288), depths=(4, 4, 12, 8), vit_num=4,
        mlp_ratios=((4,) * 4, (4,) * 4, (4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3, 4, 4)),
        drop_path_rate=0.02, params=12_151_408,
    ),
    "l": EfficientFormerV2Config(  # CGRSeg-L
        widths=(40, 80, 192, 384), depths=(5, 5, 15, 10), vit_num=6,
        mlp_ratios=((4,) * 5, (4,) * 5, (4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4), (4, 4, 4, 3, 3, 3, 3, 4, 4, 4)),
        drop_path_rate=0.1, params=25_578_016,
    ),
}


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Every conv of this backbone has a bias, even right before a BN (§0, trap 1)."""
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=True)


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Keys ``0`` (conv) and ``1`` (BN), as the official ``nn.Sequential``s."""
    return nn.Sequential(_conv(cin, cout, kernel, stride, groups), nn.BatchNorm2d(cout))


def _proj(cin: int, cout: int) -> nn.Sequential:
    """Attention output projection: GELU *first*, then 1×1 conv and BN (keys ``1``, ``2``; §7 step 7)."""
    return nn.Sequential(nn.GELU(), _conv(cin, cout), nn.BatchNorm2d(cout))


def bias_index_table(key_grid: int, query_grid: int | None = None) -> Tensor:
    """Relative-position index table, closed form of the official constructor (§8.2–8.3).

    Keys on a ``key_grid``² grid, queries on a ``query_grid``² grid (default: the same grid) that steps
    through the key grid by ``ceil(key_grid / query_grid)``. Entry [q, k] = |Δrow|·key_grid + |Δcol|, so the
    table indexes a ``key_grid``² bias vector per head. Returns int64 [query_grid², key_grid²].
    """
    query_grid = key_grid if query_grid is None else query_grid
    step = math.ceil(key_grid / query_grid)
    q = torch.arange(query_grid) * step
    k = torch.arange(key_grid)
    d = (q[:, None] - k[None, :]).abs()  # [query_grid, key_grid]: |Δ| along one axis
    idx = d[:, None, :, None] * key_grid + d[None, :, None, :]  # [qa, qb, ki, kj]
    return idx.reshape(query_grid**2, key_grid**2)


class DropPath(nn.Module):
    """Per-sample stochastic depth (training only; an identity in eval mode or at rate 0)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """1×1 conv-BN-GELU → 3×3 depthwise conv-BN-GELU → 1×1 conv-BN (§5).

    Registration order (fc1, fc2, mid, mid_norm, norm1, norm2) is the official key order, not the order
    of use. No residual around the depthwise conv; the block adds the residual.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = _conv(dim, hidden)
        self.fc2 = _conv(hidden, dim)
        self.mid = _conv(hidden, hidden, 3, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.norm2 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.mid_norm(self.mid(x)))
        return self.norm2(self.fc2(x))


class FFNBlock(nn.Module):
    """x + layer_scale_2 · Mlp(x) (§5); no pre-norm, the MLP carries its own BNs."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0):
        super().__init__()
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))  # per channel; 1e-5 = training init
        self.mlp = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))


class _BiasedAttention(nn.Module):
    """Learned relative-position bias of both attention kinds (§8), and its per-size precomputation (§15).

    State (§8.1): ``attention_biases_seg`` [8, key_grid²] is the trained table, ``attention_bias_idxs_seg``
    its index table; ``attention_biases`` / ``attention_bias_idxs`` are ImageNet-sized leftovers that official
    checkpoints carry but nothing reads. They exist only so that ``strict=True`` loading works.

    Unlike the official module (which gathers once in ``.eval()`` and then goes stale when weights are
    loaded afterwards, §8.5) the bias is computed from the parameter at run time. A precomputed bias is a
    non-persistent buffer (so ``.to()`` / ``.half()`` move it and ``state_dict`` never sees it) that is used
    only in eval mode, for the token counts it was made for, and while the table it came from is unchanged.
    """

    def _init_bias(self, key_grid: int, query_grid: int, imagenet_key_grid: int, imagenet_query_grid: int) -> None:
        self.key_grid, self.query_grid = key_grid, query_grid
        self.attention_biases_seg = nn.Parameter(torch.zeros(NUM_HEADS, key_grid**2))
        # Buffer order = official key order (§12): biases, idxs, idxs_seg.
        self.register_buffer("attention_biases", torch.zeros(NUM_HEADS, imagenet_key_grid**2))
        self.register_buffer("attention_bias_idxs", bias_index_table(imagenet_key_grid, imagenet_query_grid))
        self.register_buffer("attention_bias_idxs_seg", bias_index_table(key_grid, query_grid))
        self.register_buffer("fixed_bias", None, persistent=False)
        self._fixed_source: tuple[int, int] | None = None

    def resized_bias(self, nq: int, nk: int) -> Tensor:
        """The bias added to the logits for ``nq`` query and ``nk`` key tokens: [1, 8, nq, nk] (§8.4).

        Always resized, also at the training size where bicubic is an exact identity: a Python ``if`` on
        the token counts would be frozen by tracing and break dynamic-shape exports (§15 #3). The resize
        acts on flattened token indices, not 2-D positions; that is what the official model computes.
        """
        table = self.attention_biases_seg[:, self.attention_bias_idxs_seg]  # [8, Nq_train, Nk_train]
        return F.interpolate(table.unsqueeze(0), size=(nq, nk), mode="bicubic", align_corners=False)

    def _table_state(self) -> tuple[int, int]:
        # Identity + version counter of the trained table: optimizer steps and any in-place edit bump the
        # version; load_state_dict(assign=True) swaps the object (and any load clears the cache anyway).
        table = self.attention_biases_seg
        return id(table), table._version

    def _fixed_is_current(self) -> bool:
        if torch.compiler.is_compiling():
            # torch.export / torch.compile run the module on proxy parameters, whose identity and version
            # say nothing. Trust the cache: it was made by an explicit call and no load has happened since.
            return True
        return self._fixed_source == self._table_state()

    def attention_bias(self, nq: int, nk: int) -> Tensor:
        fixed = self.fixed_bias
        if fixed is not None and not self.training and fixed.shape[-2:] == (nq, nk) and self._fixed_is_current():
            return fixed
        return self.resized_bias(nq, nk)

    @torch.no_grad()
    def fix_bias(self, nq: int, nk: int) -> None:
        """Precompute the bias for ``nq`` × ``nk`` tokens with the run-time code path (bit-identical)."""
        self.fixed_bias = self.resized_bias(nq, nk).detach().clone()
        self._fixed_source = self._table_state()

    def clear_fixed_bias(self) -> None:
        self.fixed_bias = None
        self._fixed_source = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.clear_fixed_bias()  # the official trap (§8.5): a bias made before loading would be stale
        # The live index table is deterministic (§8.2–8.3); a different one means a checkpoint of some other
        # architecture or training size, whose biases would be applied to the wrong token pairs.
        key = prefix + "attention_bias_idxs_seg"
        loaded = state_dict.get(key)
        expected = bias_index_table(self.key_grid, self.query_grid)
        if loaded is not None and loaded.shape == expected.shape and not torch.equal(loaded.cpu().long(), expected):
            error_msgs.append(
                f"{key}: index table differs from the closed-form relative-position table for a {self.key_grid}² "
                f"key grid and {self.query_grid}² query grid (trained at {TRAIN_RESOLUTION}×{TRAIN_RESOLUTION}; "
                "spec §8.2–8.3): not a checkpoint of this architecture"
            )


class Attention4D(_BiasedAttention):
    """Multi-head attention with talking heads and a depthwise "local value" branch (§7), key ``token_mixer``.

    With ``stride2`` (stage 2) the attention runs on a 2× subsampled grid (depthwise stride-2 conv-BN) and
    its output is upsampled back bilinearly before the projection. Widths do not depend on ``dim``.
    """

    def __init__(self, dim: int, grid: int, stride2: bool, key_dim: int = 32, value_dim: int = 128):
        super().__init__()
        self.key_dim, self.value_dim = key_dim, value_dim
        self.scale = key_dim**-0.5
        self._init_bias(grid, grid, IMAGENET_ATTN_GRID, IMAGENET_ATTN_GRID)
        qk, vv = NUM_HEADS * key_dim, NUM_HEADS * value_dim
        if stride2:
            self.stride_conv = _conv_bn(dim, dim, 3, 2, groups=dim)
            self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        else:
            self.stride_conv = self.upsample = None
        self.q = _conv_bn(dim, qk)
        self.k = _conv_bn(dim, qk)
        self.v = _conv_bn(dim, vv)
        self.v_local = _conv_bn(vv, vv, 3, groups=vv)
        # 1×1 convs over the head axis of the [B, heads, Nq, Nk] logits.
        self.talking_head1 = nn.Conv2d(NUM_HEADS, NUM_HEADS, 1)
        self.talking_head2 = nn.Conv2d(NUM_HEADS, NUM_HEADS, 1)
        self.proj = _proj(vv, dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        b, _, h, w = x.shape
        n = h * w
        # Channel c of q/k/v = head c // dim_per_head, component c % dim_per_head; tokens row-major.
        q = self.q(x).reshape(b, NUM_HEADS, self.key_dim, n).transpose(2, 3)
        k = self.k(x).reshape(b, NUM_HEADS, self.key_dim, n)
        v0 = self.v(x)
        v_local = self.v_local(v0)  # on the BN-ed values (trap 6)
        v = v0.reshape(b, NUM_HEADS, self.value_dim, n).transpose(2, 3)

        attn = (q @ k) * self.scale + self.attention_bias(n, n)
        attn = self.talking_head1(attn).softmax(dim=-1)  # head1's bias is constant per row: no effect
        attn = self.talking_head2(attn)  # after the softmax (trap 5): rows no longer sum to 1
        out = (attn @ v).transpose(2, 3).reshape(b, NUM_HEADS * self.value_dim, h, w) + v_local
        if self.upsample is not None:
            out = self.upsample(out)
        return self.proj(out)


class AttnFFNBlock(nn.Module):
    """x + layer_scale_1 · Attention4D(x), then x + layer_scale_2 · Mlp(x) (§6)."""

    def __init__(self, dim: int, hidden: int, grid: int, stride2: bool, drop_path: float = 0.0):
        super().__init__()
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), 1e-5))
        self.token_mixer = Attention4D(dim, grid, stride2)
        self.mlp = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.token_mixer(x))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))


class Downsample(nn.Module):
    """3×3 stride-2 conv + BN, no activation (``network.1`` / ``network.3``, §9.1)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = _conv(cin, cout, 3, 2)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class LGQuery(nn.Module):
    """Local-global query: depthwise stride-2 conv (no BN) plus a stride-2 subsample, then 1×1 conv-BN (§9.3)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.local = nn.Sequential(_conv(dim, dim, 3, 2, groups=dim))
        self.proj = _conv_bn(dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        # The official 1×1 average pool with stride 2 is this strided slice, exactly (a Slice in ONNX, §15 #5).
        return self.proj(self.local(x) + x[:, :, ::2, ::2])


class Attention4DDownsample(_BiasedAttention):
    """Downsample attention of ``network.5.attn`` (§9.3): queries on the 2× subsampled grid, keys at full grid.

    No talking heads. ``grid`` is the key grid at the training size (32 at 512²).
    """

    def __init__(self, dim: int, out_dim: int, grid: int, key_dim: int = 16, value_dim: int = 64):
        super().__init__()
        self.key_dim, self.value_dim = key_dim, value_dim
        self.scale = key_dim**-0.5
        self._init_bias(grid, math.ceil(grid / 2), 2 * IMAGENET_ATTN_GRID, IMAGENET_ATTN_GRID)
        qk, vv = NUM_HEADS * key_dim, NUM_HEADS * value_dim
        self.q = LGQuery(dim, qk)
        self.k = _conv_bn(dim, qk)
        self.v = _conv_bn(dim, vv)
        self.v_local = _conv_bn(vv, vv, 3, 2, groups=vv)  # stride 2: lands on the query grid
        self.proj = _proj(vv, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        n = h * w
        q = self.q(x)
        hq, wq = q.shape[-2:]
        nq = hq * wq
        q = q.reshape(b, NUM_HEADS, self.key_dim, nq).transpose(2, 3)
        k = self.k(x).reshape(b, NUM_HEADS, self.key_dim, n)
        v0 = self.v(x)
        v_local = self.v_local(v0)
        v = v0.reshape(b, NUM_HEADS, self.value_dim, n).transpose(2, 3)

        attn = ((q @ k) * self.scale + self.attention_bias(nq, n)).softmax(dim=-1)
        out = (attn @ v).transpose(2, 3).reshape(b, NUM_HEADS * self.value_dim, hq, wq) + v_local
        return self.proj(out)


class AttnDownsample(nn.Module):
    """Local-global downsampling ``network.5`` (§9.2): attn(x) + BN(conv3×3/2(x))."""

    def __init__(self, cin: int, cout: int, grid: int):
        super().__init__()
        self.attn = Attention4DDownsample(cin, cout, grid)
        self.conv = _conv(cin, cout, 3, 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x) + self.bn(self.conv(x))


# --------------------------------------------------------------------------------------------------
# Input sizes
# --------------------------------------------------------------------------------------------------


def _admissible(side: int) -> bool:
    return side > 0 and math.ceil(side / 16) % 2 == 0


def check_input_size(height: int, width: int) -> None:
    """Raise :class:`InputSizeError` unless the stride-16 grid ceil(H/16) × ceil(W/16) has even sides (§11).

    The stride-2 attention and the downsample attention halve that grid; an odd count cannot be halved
    consistently (the official model fails with a reshape error). Equivalently each side mod 32 is 0 or
    17..31; multiples of 32 always work (the ADE20K test pipeline pads to them).
    """
    if _admissible(height) and _admissible(width):
        return
    pad = [max(32, -(-v // 32) * 32) for v in (height, width)]
    raise InputSizeError(
        f"Input size {height}x{width} is not supported by EfficientFormerV2: ceil(H/16) and ceil(W/16) must both "
        "be even, i.e. each side mod 32 must be 0 or 17..31 (multiples of 32 always work); "
        f"pad the input to {pad[0]}x{pad[1]}."
    )


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class EfficientFormerV2(nn.Module):
    """EfficientFormerV2-{S1,S2,L} dense backbone: ``forward(x)`` returns the stride-4/8/16/32 stage maps.

    Args:
        variant: ``"s1"``, ``"s2"`` or ``"l"`` (CGRSeg-T/B/L backbones), see :data:`VARIANTS`.
        resolution: training crop that sizes the bias tables (512 for every CGRSeg checkpoint). Any
            admissible input size runs; the bias is resized to it.
        drop_path_rate: stochastic depth for training, rising linearly over the blocks; ``None`` takes the
            variant's official value. Identity in eval mode.
    """

    def __init__(self, variant: str = "s1", resolution: int = TRAIN_RESOLUTION, drop_path_rate: float | None = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown EfficientFormerV2 variant {variant!r}: choose one of {', '.join(VARIANTS)}.")
        cfg = VARIANTS[variant]
        self.variant, self.config, self.resolution = variant, cfg, resolution
        self.widths = cfg.widths
        c = cfg.widths
        self.patch_embed = nn.Sequential(
            _conv(3, c[0] // 2, 3, 2), nn.BatchNorm2d(c[0] // 2), nn.GELU(),
            _conv(c[0] // 2, c[0], 3, 2), nn.BatchNorm2d(c[0]), nn.GELU(),
        )
        # Grids at the training size (§4): 128, 64, 32, 16 at 512; they only size the bias tables.
        res = [math.ceil(resolution / 2 ** (i + 2)) for i in range(4)]
        rate = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
        total = sum(cfg.depths)
        network: list[nn.Module] = []
        done = 0
        for i, (dim, depth) in enumerate(zip(c, cfg.depths)):
            if i in (1, 2):
                network.append(Downsample(c[i - 1], dim))
            elif i == 3:
                network.append(AttnDownsample(c[2], dim, res[2]))
            blocks: list[nn.Module] = []
            for j in range(depth):
                hidden = int(dim * cfg.mlp_ratios[i][j])
                dpr = rate * (done + j) / max(total - 1, 1)
                if i >= 2 and j >= depth - cfg.vit_num:
                    stride2 = i == 2  # stage 2 always attends on the halved grid, stage 3 never (§7)
                    grid = math.ceil(res[i] / 2) if stride2 else res[i]
                    blocks.append(AttnFFNBlock(dim, hidden, grid, stride2, dpr))
                else:
                    blocks.append(FFNBlock(dim, hidden, dpr))
            network.append(nn.Sequential(*blocks))
            done += depth
        self.network = nn.ModuleList(network)

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2:]
        if isinstance(height, int) and isinstance(width, int):  # symbolic under dynamic-shape export: no guard
            check_input_size(height, width)
        x = self.patch_embed(x)
        features = []
        for i, layer in enumerate(self.network):
            x = layer(x)
            if i % 2 == 0:  # network[0], [2], [4], [6]: raw stage outputs, no norms (§11)
                features.append(x)
        return features

    # ---- attention biases per input size (§8.4, §15) ----

    def attention_modules(self) -> list[tuple[str, _BiasedAttention]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, _BiasedAttention)]

    @staticmethod
    def attention_token_counts(height: int, width: int) -> dict[str, tuple[int, int]]:
        """(query, key) token counts of each attention kind for an input size (§8.4 table)."""
        check_input_size(height, width)
        g16h, g16w = math.ceil(height / 16), math.ceil(width / 16)
        n16, n32 = g16h * g16w, (g16h // 2) * (g16w // 2)
        return {"stage2": (n32, n32), "down3": (n32, n16), "stage3": (n32, n32)}

    def precompute_attention_biases(self, height: int, width: int) -> None:
        """Precompute every attention's resized bias for a ``height`` × ``width`` input (§15 #2).

        Later eval-mode calls at this size read the stored bias instead of gathering and resizing, so an
        exported graph carries it as a constant (no ``Gather``, no cubic ``Resize``: needed for CoreML,
        advisable for TensorRT) and is bit-identical to the run-time path. Other sizes, training mode and a
        changed bias table (e.g. weights loaded afterwards) fall back to the run-time computation. For a
        dynamic-shape export call :meth:`clear_attention_biases` first: tracing would freeze the constant.
        """
        counts = self.attention_token_counts(height, width)
        for _, m in self.attention_modules():
            if isinstance(m, Attention4DDownsample):
                m.fix_bias(*counts["down3"])
            else:
                m.fix_bias(*counts["stage3"])  # stage 2 (halved grid) and stage 3 have the same counts

    def clear_attention_biases(self) -> None:
        for _, m in self.attention_modules():
            m.clear_fixed_bias()
