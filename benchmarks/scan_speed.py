"""Eager selective scan: the blocked default vs the step-by-step reference (issue 2).

Shapes are TinyViM-S's largest scan (stage 3: K=4 directions x 168 channels, N=8), batch 1, at
L = 49 (224x224 input), 256 (512x512) and 1024 (1024x1024). Usage:
    python benchmarks/scan_speed.py [--threads 2] [--runs 50]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, parse_bench_args  # noqa: E402

from tinyvim_deploy.environment import cpu_description  # noqa: E402
from tinyvim_deploy.models.ops import selective_scan, selective_scan_ref  # noqa: E402


def make_inputs(L: int, batch: int = 1, k: int = 4, d: int = 168, n: int = 8):
    g = torch.Generator().manual_seed(L)
    dt = torch.exp(torch.rand(k * d, generator=g) * 4.6 - 6.9)
    return (
        torch.randn(batch, k * d, L, generator=g),
        0.5 * torch.randn(batch, k * d, L, generator=g),
        -torch.exp(torch.log(torch.arange(1, n + 1.0)).repeat(k * d, 1)),
        torch.randn(batch, k, n, L, generator=g),
        torch.randn(batch, k, n, L, generator=g),
        torch.ones(k * d),
        dt + torch.log(-torch.expm1(-dt)),
    )


def main() -> None:
    args = parse_bench_args(__doc__)
    print(f"# {cpu_description()}, torch {torch.__version__}, {args.threads} threads, median of {args.runs}")
    print("| L | reference (step loop) ms | default (blocked) ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for L in (49, 256, 1024):
            x = make_inputs(L)
            runs = args.runs if L < 1024 else max(10, args.runs // 5)
            t = interleaved_medians({"ref": lambda: selective_scan_ref(*x), "fast": lambda: selective_scan(*x)}, runs)
            diff = (selective_scan_ref(*x) - selective_scan(*x)).abs().max().item()
            print(f"| {L} | {t['ref']:.2f} | {t['fast']:.2f} | {t['ref'] / t['fast']:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
