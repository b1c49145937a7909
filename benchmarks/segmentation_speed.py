"""Segmentors at 512x512, batch 1: ONNX Runtime vs eager PyTorch (reparameterized), same process and run.

For each model: export to ONNX (validated), then time the ORT session and the eager model on one
seeded input, interleaved, median of --runs. Random weights: latency does not depend on them.
ORT runs with allow_spinning=0 because it shares the process with torch (toolchain notes §3).
    python benchmarks/segmentation_speed.py [--threads 2] [--runs 20] [--models tinyvim-s-cgrseg,cgrseg-t]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians  # noqa: E402

import tinyvim_deploy as tv  # noqa: E402
from tinyvim_deploy.environment import cpu_description  # noqa: E402
from tinyvim_deploy.export.onnx_export import export_onnx  # noqa: E402
from tinyvim_deploy.export.validate import ort_session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models", default="tinyvim-s-cgrseg,cgrseg-t")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).standard_normal((1, 3, 512, 512), dtype=np.float32)
    xt = torch.from_numpy(x)
    print(f"{cpu_description()}, {args.threads} threads, torch {torch.__version__}, median of {args.runs}")
    print("\n| model 512x512 | eager ms | ORT ms | ORT / eager | export parity (max abs) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            weights = Path(tmp) / f"{name}.pth"
            torch.save(tv.create_model(name).state_dict(), weights)
            result = export_onnx(name, weights=weights, output=Path(tmp) / f"{name}.onnx", photos_dir=None)
            eager = tv.reparameterize(tv.create_model(name, weights=weights))
            session = ort_session(str(result.path), args.threads)
            feed = {session.get_inputs()[0].name: x}
            with torch.inference_mode():
                t = interleaved_medians({"eager": lambda: eager(xt), "ort": lambda: session.run(None, feed)},
                                        args.runs, warmup=3)
            print(f"| {name} | {t['eager']:.1f} | {t['ort']:.1f} | {t['ort'] / t['eager']:.2f} | "
                  f"{result.report.max_abs:.1e} |")


if __name__ == "__main__":
    main()
