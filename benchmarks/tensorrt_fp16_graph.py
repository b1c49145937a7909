"""The FP16 graph that `--target trt --precision fp16` hands to TensorRT, run in ONNX Runtime (CPU).

No GPU or TensorRT is needed: this measures what the graph computes, not TensorRT's kernels (ORT's
CPU FP16 kernels round like any FP16 implementation, but accumulate their own way). It compares
against PyTorch FP32, on the real photos, two ways of converting:
  - ours: FP16 everywhere except the selective-scan sub-graph, LayerNorm and Softmax (FP32);
  - naive: the same converter with only LayerNorm/Softmax kept, i.e. the scan in FP16 too.

    python benchmarks/tensorrt_fp16_graph.py [--weights CKPT] [--input-size 224]   (default: ../shared seed-7 fixture)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from tinyvim_deploy.export import tensorrt_export as te
from tinyvim_deploy.export.onnx_export import export_onnx
from tinyvim_deploy.export.validate import photo_batch
from tinyvim_deploy.models import create_model, reparameterize

SHARED = Path(os.environ.get("TVD_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(SHARED / "fixtures/tinyvim/tinyvim_s_seed7_train_layout.pth"))
    parser.add_argument("--input-size", type=int, default=224, help="square input (L = (size/32)^2 scan steps)")
    args = parser.parse_args()
    size = (args.input_size, args.input_size)
    torch.set_num_threads(2)
    model = reparameterize(create_model("tinyvim-s", weights=args.weights))
    x = photo_batch(SHARED / "data" / "photos", size, model.spec)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx("tinyvim-s", weights=args.weights, output=Path(tmp) / "s.onnx", dynamic_batch=True,
                           input_size=size, validate=False).path
        source = onnx.load(str(path))
    fp32 = te.prepare_onnx(source, "fp32")
    ours = te.prepare_onnx(source, "fp16")
    naive = te.to_mixed_fp16(fp32, [n.name for n in fp32.graph.node if n.op_type in te.FP32_OP_TYPES])
    print(f"TinyViM-S {args.input_size} (scan length {(args.input_size // 32) ** 2}), {len(x)} photos, "
          f"logits max |ref| {np.abs(ref).max():.3f}; vs PyTorch FP32:")
    print(f"{'graph':<42} {'max abs diff':>12} {'mean abs diff':>13} {'top-1 agree':>11}")
    for name, graph in (("fp32 (inlined)", fp32), ("fp16, scan+LayerNorm+Softmax fp32 (ours)", ours),
                        ("fp16, scan in fp16 too (naive)", naive)):
        got = te.run_onnx(graph, x)[0]
        diff = np.abs(got.astype(np.float64) - ref)
        print(f"{name:<42} {diff.max():>12.2e} {diff.mean():>13.2e} {np.mean(got.argmax(1) == ref.argmax(1)):>11.0%}")


if __name__ == "__main__":
    main()
