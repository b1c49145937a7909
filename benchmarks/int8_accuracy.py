"""INT8 accuracy evidence on a *trained* TinyViM-S (random weights say nothing about quantization).

1. Train TinyViM-S on the seeded shapes-and-textures set (training/synthetic.py), 10 classes.
2. Export it to ONNX (validated against PyTorch) at --size.
3. For each calibration method, run the full INT8 pipeline exactly as `tvdeploy export --int8` does
   (calibration images read from an image folder, accuracy budget, held-out check).
4. Print FP32 and INT8 held-out accuracy, drop, agreement, cosine and the float groups chosen.

    python benchmarks/int8_accuracy.py [--per-class 200 --epochs 15 --threads 2 --device cpu]

The calibration/held-out folder is generated from another seed than the training images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from tinyvim_deploy.calibration.int8 import quantize_onnx
from tinyvim_deploy.environment import cpu_description
from tinyvim_deploy.export.onnx_export import export_onnx
from tinyvim_deploy.training.synthetic import make_dataset, write_image_folder
from tinyvim_deploy.training.train import train_synthetic_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200, help="Training images per class.")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--methods", default="entropy,minmax,percentile")
    parser.add_argument("--profile", default="ort-cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=None, help="Keep the checkpoint and ONNX files here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="tvd-int8-"))
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    model, history = train_synthetic_classifier(
        per_class=args.per_class, epochs=args.epochs, size=args.size, device=args.device,
        progress=lambda e, loss: print(f"epoch {e + 1}/{args.epochs}: loss {loss:.4f} "
                                       f"({time.perf_counter() - t0:.0f} s)", flush=True))
    train_s = time.perf_counter() - t0
    ckpt = out / "tinyvim-s-shapes.pth"
    torch.save({"model": model.state_dict()}, ckpt)
    float_path = export_onnx("tinyvim-s", weights=ckpt, output=out / "tinyvim-s-shapes.onnx", input_size=args.size,
                             photos_dir=None).path
    images, labels = make_dataset((args.calib + args.holdout) // 10 + 1, size=args.size, seed=12345)
    folder = write_image_folder(out / "images", images, labels)

    print(f"\n# INT8 on TinyViM-S trained on shapes ({args.per_class * 10} images, {args.epochs} epochs, "
          f"{train_s:.0f} s on {args.device}), {args.size}x{args.size}, profile {args.profile}, "
          f"{args.calib} calibration / {args.holdout} held-out images; CPU: {cpu_description()}\n")
    print("| method | FP32 acc % | INT8 acc % | drop (points) | top-1 agreement | logit cosine | groups in float | s |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        r = quantize_onnx(float_path, folder, output=out / f"tinyvim-s-shapes_int8_{method}.onnx",
                          samples=args.calib, holdout=args.holdout, method=method, profile=args.profile)
        h = r.holdout
        groups = ", ".join(r.budget.float_groups) or "none"
        print(f"| {method} | {100 * h.float_accuracy:.2f} | {100 * h.quant_accuracy:.2f} | {h.accuracy_drop:+.2f} | "
              f"{h.top1_agreement:.4f} | {h.cosine:.5f} | {len(r.budget.float_groups)}/{len(r.budget.groups)}: "
              f"{groups} | {r.seconds:.0f} |", flush=True)
    print(f"\nfiles in {out}")


if __name__ == "__main__":
    main()
