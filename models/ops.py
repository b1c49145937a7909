"""The two operators that make TinyViM a vision Mamba, each in one named place.

* ``selective_scan``: mamba_ssm's ``selective_scan_fn`` (Δ softplus, D skip, grouped B/C) — spec §4.3.
* ``laplace_split`` / ``laplace_merge``: the Laplace mixer's frequency split and merge — spec §5, steps 6a–6d.

Each has a plain-PyTorch implementation used in eager mode. During ONNX export the model calls the
same operators as ``torch.ops.tinyvim.*`` custom ops instead (see :func:`custom_ops`), so the exporter
emits one ``tinyvim::`` node per call; the ONNX function bodies and NumPy references live in
``tinyvim_deploy.export.ops``. The contract of all three is written down in ``export/OPS.md``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "selective_scan",
    "selective_scan_ref",
    "linear_recurrence",
    "laplace_split",
    "laplace_merge",
    "custom_ops",
    "custom_ops_enabled",
]

_CUSTOM_OPS = False


@contextlib.contextmanager
def custom_ops(enabled: bool = True) -> Iterator[None]:
    """Route the model's scan and Laplace calls through ``torch.ops.tinyvim.*`` (for export)."""
    global _CUSTOM_OPS
    previous, _CUSTOM_OPS = _CUSTOM_OPS, enabled
    try:
        yield
    finally:
        _CUSTOM_OPS = previous


def custom_ops_enabled() -> bool:
    return _CUSTOM_OPS


# --------------------------------------------------------------------------------------------------
# Selective scan
# --------------------------------------------------------------------------------------------------


def selective_scan_ref(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor
) -> Tensor:
    """Sequential oracle: one step per time index, exactly the recurrence of spec §4.3.

    Layouts (mamba_ssm): u, delta (b, K·D, L); A (K·D, N); B, C (b, K, N, L); D, delta_bias (K·D).
    """
    b, kd, L = u.shape
    K = B.shape[1]
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])
    Bc = B.float().repeat_interleave(kd // K, dim=1)  # (b, K·D, N, L): group k serves channels k·D..
    Cc = C.float().repeat_interleave(kd // K, dim=1)
    h = u.new_zeros(b, kd, A.shape[1], dtype=torch.float32)
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bc[..., t]
        ys.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y.to(u.dtype)


def linear_recurrence(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t ⊙ h_{t−1} + b_t along dim 2 (h_{−1} = 0), for (batch, channels, L, N) tensors.

    Two-level blocked scan: L is cut into n chunks of T ≈ √L steps. A T-step loop runs inside
    every chunk at once (vectorised across chunks), an n-step loop carries the state from chunk
    to chunk, and one multiply adds the carry back using the running product of decays. That is
    ≈ 2√L vector steps instead of L, with the same multiplications as the sequential recurrence
    (products of decays in (0, 1] only: no exp of differences, nothing that can overflow). The
    loops run over sizes fixed by the input shape, so ``torch.export`` unrolls them.
    """
    bs, ch, L, N = a.shape
    T = max(1, math.isqrt(L - 1) + 1) if L > 1 else 1  # ceil(sqrt(L))
    n = -(-L // T)
    pad = n * T - L
    if pad:  # identity steps at the end (decay 1, input 0) do not change earlier states
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        b = F.pad(b, (0, 0, 0, pad))
    a = a.reshape(bs, ch, n, T, N)
    b = b.reshape(bs, ch, n, T, N)

    h = b[:, :, :, 0]
    local = [h]
    for t in range(1, T):
        h = a[:, :, :, t] * h + b[:, :, :, t]
        local.append(h)
    h_local = torch.stack(local, dim=3)  # states as if every chunk started from zero
    decay = _cumprod_steps(a)  # product of decays from the chunk start up to t

    carry = h_local.new_zeros(bs, ch, N)
    carries = [carry]
    for j in range(1, n):
        carry = decay[:, :, j - 1, -1] * carry + h_local[:, :, j - 1, -1]
        carries.append(carry)
    h = h_local + decay * torch.stack(carries, dim=2).unsqueeze(3)
    return h.reshape(bs, ch, n * T, N)[:, :, :L]


def _cumprod_steps(a: Tensor) -> Tensor:
    """``torch.cumprod(a, dim=3)`` as explicit multiplies: coremltools lowers cumprod to scatter ops,
    which keep a model off the Neural Engine. Costs 3–5 % of the eager scan (measured at L = 49/256)."""
    p = a[:, :, :, 0]
    prods = [p]
    for t in range(1, a.shape[3]):
        p = p * a[:, :, :, t]
        prods.append(p)
    return torch.stack(prods, dim=3)


def _selective_scan_eager(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor
) -> Tensor:
    b, kd, L = u.shape
    K, N = B.shape[1], A.shape[1]
    d = kd // K
    x = u.float()
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])  # threshold 20, as mamba_ssm
    decay = torch.exp(dt.unsqueeze(-1) * A.float()[:, None, :])  # (b, K·D, L, N)
    B_t = B.float().transpose(2, 3).unsqueeze(2)  # (b, K, 1, L, N): shared by the D channels
    C_t = C.float().transpose(2, 3).unsqueeze(2)
    drive = ((dt * x).view(b, K, d, L, 1) * B_t).reshape(b, kd, L, N)
    h = linear_recurrence(decay, drive)
    y = (h.view(b, K, d, L, N) * C_t).sum(-1).reshape(b, kd, L)
    return (y + D.float()[:, None] * x).to(u.dtype)


def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor
) -> Tensor:
    """Selective scan with Δ softplus and D skip; same layouts and result as :func:`selective_scan_ref`."""
    if _CUSTOM_OPS:
        return torch.ops.tinyvim.selective_scan(u, delta, A, B, C, D, delta_bias)
    return _selective_scan_eager(u, delta, A, B, C, D, delta_bias)


class SelectiveScan(torch.nn.Module):
    """:func:`selective_scan` as a parameter-free module, so exported graphs can tell its nodes apart.

    ``torch.export`` records the module stack of every node; the Core ML export keeps the nodes of
    this module in FP32 inside an FP16 program (spec §11.10). No state_dict entries.
    ``delta_bias`` may come in any shape with K·D elements (flattened here, not by the caller: a view
    of a parameter made under ``no_grad`` trips torch's module hooks, e.g. ``FlopCounterMode``).
    """

    def forward(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                delta_bias: Tensor) -> Tensor:
        return selective_scan(u, delta, A, B, C, D, delta_bias.reshape(-1))


# --------------------------------------------------------------------------------------------------
# Laplace split / merge
# --------------------------------------------------------------------------------------------------


def _laplace_split_eager(x: Tensor, pool: int) -> tuple[Tensor, Tensor]:
    low = F.avg_pool2d(x, pool, pool)
    band = x - F.interpolate(low, size=x.shape[-2:], mode="nearest")
    return low, band


def _laplace_merge_eager(low: Tensor, band: Tensor, pool: int) -> Tensor:
    up = F.interpolate(low, size=band.shape[-2:], mode="bilinear", align_corners=False)
    return up + band


def laplace_split(x: Tensor, pool: int) -> tuple[Tensor, Tensor]:
    """Split a map into its low-pass level (P×P average pool) and the band-pass residual."""
    if _CUSTOM_OPS:
        low, band = torch.ops.tinyvim.laplace_split(x, pool)
        return low, band
    return _laplace_split_eager(x, pool)


def laplace_merge(low: Tensor, band: Tensor, pool: int) -> Tensor:
    """Bilinear upsampling (align_corners=False) of the processed low-pass level, plus the residual."""
    if _CUSTOM_OPS:
        return torch.ops.tinyvim.laplace_merge(low, band, pool)
    return _laplace_merge_eager(low, band, pool)


# --------------------------------------------------------------------------------------------------
# torch.library registration: opaque nodes for torch.export / torch.onnx.export
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("tinyvim::selective_scan", mutates_args=())
def _selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor
) -> Tensor:
    return _selective_scan_eager(u, delta, A, B, C, D, delta_bias)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias):
    return torch.empty_like(u)


@torch.library.custom_op("tinyvim::laplace_split", mutates_args=())
def _laplace_split_op(x: Tensor, pool: int) -> tuple[Tensor, Tensor]:
    low, band = _laplace_split_eager(x, pool)
    return low, band


@_laplace_split_op.register_fake
def _(x, pool):
    b, c, h, w = x.shape
    return x.new_empty(b, c, h // pool, w // pool), torch.empty_like(x)


@torch.library.custom_op("tinyvim::laplace_merge", mutates_args=())
def _laplace_merge_op(low: Tensor, band: Tensor, pool: int) -> Tensor:
    return _laplace_merge_eager(low, band, pool)


@_laplace_merge_op.register_fake
def _(low, band, pool):
    return torch.empty_like(band)
