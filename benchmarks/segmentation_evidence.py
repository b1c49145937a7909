"""Segmentation evidence on a trained model: FP32, ONNX Runtime and INT8 mIoU of tinyvim-s-cgrseg.

No official weights can be fetched here, and random weights say nothing about export or INT8, so
this script trains ``tinyvim-s-cgrseg`` from scratch on the seeded synthetic scenes of
``training/synthetic.py`` (background + 10 shape/texture classes, 2–4 objects per image), then:
  1. FP32 mIoU of the trained PyTorch model on held-out scenes (``tvdeploy eval``'s metric code);
  2. exports it to ONNX at the training size (validated) and scores the ONNX file the same way;
  3. quantizes that file to INT8 (our ORT pipeline, calibration on training images only, pixel
     agreement budget 99%) and scores it; reports the drop and the groups kept in float.
Deterministic given the seed; the time is printed. A GPU is not needed (CPU: ~10–20 min).
    python benchmarks/segmentation_evidence.py [--size 192] [--train 240] [--val 60] [--epochs 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tinyvim_deploy as tv
from tinyvim_deploy.calibration.int8 import quantize_onnx
from tinyvim_deploy.environment import cpu_description
from tinyvim_deploy.export.onnx_export import export_onnx
from tinyvim_deploy.tasks.segmentation import evaluate_segmentation, prepare
from tinyvim_deploy.training.synthetic import SEG_CLASSES, make_segmentation_dataset, write_segmentation_folder
from tinyvim_deploy.training.train import train_segmenter

MODEL = "tinyvim-s-cgrseg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Keep the data, checkpoint and models here.")
    parser.add_argument("--weights", type=Path, default=None, help="A checkpoint of an earlier run: skip training.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.out or Path(tmp))


def run(args, out: Path) -> None:
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = make_segmentation_dataset(args.train, size=args.size, seed=0)
    val_images, val_labels = make_segmentation_dataset(args.val, size=args.size, seed=1)
    write_segmentation_folder(out / "train", train_images, train_labels)
    val_dir = write_segmentation_folder(out / "val", val_images, val_labels)

    weights = out / "tinyvim_s_cgrseg_synthetic.pth"
    losses: list[float] = []
    if args.weights is None:
        torch.manual_seed(0)  # the initialisation, so that a rerun trains the same model
        model = tv.create_model(MODEL, num_classes=len(SEG_CLASSES))
        box = (args.size, args.size)
        tensors = np.stack([prepare(rgb, model.spec, box)[0] for rgb in train_images])
        losses = train_segmenter(model, tensors, train_labels, epochs=args.epochs, batch_size=args.batch,
                                 progress=lambda e, loss: print(f"epoch {e + 1}/{args.epochs}: loss {loss:.4f}",
                                                                flush=True))
        torch.save({"state_dict": model.state_dict()}, weights)
    else:
        weights = args.weights
    train_s = time.perf_counter() - t0

    def score(artifact, **options) -> float:
        with tv.Predictor(artifact, threads=args.threads, **options) as predictor:
            return evaluate_segmentation(predictor, val_dir, reduce_zero_label=False).miou

    rows = {"PyTorch FP32 (eager)": score(MODEL, weights=weights, input_size=args.size)}
    exported = export_onnx(MODEL, weights=weights, output=out / "s_cgrseg.onnx", input_size=args.size,
                           photos_dir=None)
    rows["ONNX Runtime FP32"] = score(exported.path)
    int8 = quantize_onnx(exported.path, out / "train" / "images", samples=128, holdout=0, min_agreement=0.99,
                         max_drop=None)
    rows["ONNX Runtime INT8 (ort-cpu, entropy)"] = score(int8.path)

    print(f"\n{cpu_description()}, {args.threads} threads, torch {torch.__version__}; {args.train} training / "
          f"{args.val} held-out scenes at {args.size}x{args.size}, {args.epochs} epochs"
          + (f" (loss {losses[0]:.3f} -> {losses[-1]:.3f}), trained in {train_s / 60:.1f} min" if losses
             else f", weights from {weights}"))
    print("\n| model | mIoU (held-out) | vs FP32 |\n|---|---|---|")
    base = rows["PyTorch FP32 (eager)"]
    for name, miou in rows.items():
        print(f"| {name} | {miou:.4f} | {100 * (miou - base):+.2f} pts |")
    budget = int8.budget
    print(f"\nINT8: export parity {exported.report.max_abs:.1e}; pixel agreement with float on the calibration images "
          f"{budget.final.top1_agreement:.4f}; {len(budget.float_groups)} of {len(budget.groups)} groups kept in float "
          f"({', '.join(budget.float_groups) or 'none'}); MatMuls (prototype tail) always float; "
          f"size {exported.path.stat().st_size / 1e6:.1f} MB -> {int8.path.stat().st_size / 1e6:.1f} MB; "
          f"total {(time.perf_counter() - t0) / 60:.1f} min")
    (out / "evidence.json").write_text(json.dumps({"miou": rows, "losses": losses, "args": vars(args)}, default=str,
                                                  indent=1))


if __name__ == "__main__":
    main()
