"""The fast selective scan equals the sequential oracle, and torch.export can trace it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import need_shared
from tinyvim_deploy.models.ops import linear_recurrence, selective_scan, selective_scan_ref


def _case(L: int, batch: int = 3, k: int = 4, d: int = 12, n: int = 8, seed: int = 0):
    """Inputs with the statistics the model produces (spec §12 init, fixture-like perturbations)."""
    g = torch.Generator().manual_seed(seed + L)
    u = torch.randn(batch, k * d, L, generator=g)
    delta = 0.5 * torch.randn(batch, k * d, L, generator=g)
    A = -torch.exp(torch.log(torch.arange(1, n + 1.0)).repeat(k * d, 1) + 0.3 * torch.randn(k * d, n, generator=g))
    B = torch.randn(batch, k, n, L, generator=g)
    C = torch.randn(batch, k, n, L, generator=g)
    D = 0.5 + torch.rand(k * d, generator=g)
    dt = torch.exp(torch.rand(k * d, generator=g) * (np.log(0.1) - np.log(1e-3)) + np.log(1e-3))
    return u, delta, A, B, C, D, dt + torch.log(-torch.expm1(-dt))


@pytest.mark.parametrize("L", [1, 2, 49, 80, 256, 1024])
def test_fast_scan_equals_reference(L):
    args = _case(L)
    ref, fast = selective_scan_ref(*args), selective_scan(*args)
    assert torch.isfinite(fast).all()
    assert (ref - fast).abs().max().item() <= 1e-5


@pytest.mark.parametrize("L", [1, 49, 256])
def test_scan_matches_official_cases(L):
    z = np.load(need_shared() / "scan_cases.npz")
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    args = [torch.from_numpy(z[f"L{L}_{n}"]) for n in names]
    y = torch.from_numpy(z[f"L{L}_y"])
    assert (selective_scan(*args) - y).abs().max().item() <= 2e-5
    assert (selective_scan_ref(*args) - y).abs().max().item() <= 2e-5


def test_linear_recurrence_handles_strong_decay():
    """Decays that underflow to 0 must give 0 carry, never NaN (no exp of differences)."""
    a = torch.rand(2, 5, 300, 4) * 1e-30
    b = torch.randn(2, 5, 300, 4)
    h = linear_recurrence(a, b)
    assert torch.isfinite(h).all() and torch.allclose(h, b, atol=1e-6)


def test_scan_is_traceable_by_torch_export():
    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, bias):
            return selective_scan(u, delta, A, B, C, D, bias)

    args = _case(49, batch=1)
    program = torch.export.export(Scan(), args)
    assert torch.allclose(program.module()(*args), selective_scan_ref(*args), atol=1e-5)


def test_the_export_form_of_the_decay_product_equals_cumprod():
    from tinyvim_deploy.models.ops import _cumprod_steps

    a = torch.rand(2, 3, 4, 7, 5)
    assert torch.allclose(_cumprod_steps(a), torch.cumprod(a, dim=3), rtol=1e-6, atol=0)
