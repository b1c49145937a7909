"""GPU check for the torch backend: CUDA parity against CPU, and latency/throughput per mode.

For each model (tinyvim-s/b/l) and batch size (1 and 256 by default) it times three modes with
``tinyvim_deploy.profiling.benchmark`` — eager FP32, CUDA-graph replay FP32, CUDA-graph replay with
FP16 autocast — and checks the CUDA logits against the CPU logits on the same seeded batch.
FP32 rows run with TF32 off, so that parity means the same arithmetic as on the CPU.

    python benchmarks/gpu_check.py                      # on an NVIDIA GPU machine
    python benchmarks/gpu_check.py --device cpu --models tinyvim-s --batches 1 -n 3   # smoke run

Prints a markdown table (paste it into the README with the GPU's name) and writes JSON with --out.
Target (issue 4): TinyViM-S, batch 1, CUDA graphs on an H100: <= 1.5 ms.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tinyvim_deploy.environment import environment_report
from tinyvim_deploy.predictor import Predictor
from tinyvim_deploy.profiling import benchmark

MODES = {  # name -> torch backend options
    "eager fp32": {},
    "cuda graph fp32": {"cuda_graph": True},
    "cuda graph fp16": {"cuda_graph": True, "fp16": True},
}


def parity(model: str, device: str, batch: int, weights, fp16: bool) -> tuple[float, bool]:
    """Max abs diff and top-1 agreement of the device's logits against the CPU's, same input."""
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    cpu = Predictor(model, backend="torch", device="cpu", weights=weights).backend.run(x)[0]
    dev = Predictor(model, backend="torch", device=device, weights=weights, fp16=fp16).backend.run(x)[0]
    return float(np.abs(cpu - dev).max()), bool((cpu.argmax(1) == dev.argmax(1)).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default="tinyvim-s,tinyvim-b,tinyvim-l")
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("-n", "--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--weights", default=None, help="Checkpoint for the parity check (tinyvim-s only).")
    parser.add_argument("--out", default=None, help="Write all results as JSON here.")
    args = parser.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    on_gpu = args.device.startswith("cuda")
    gpu = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    print(f"# gpu_check on {gpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")

    rows, parity_rows = [], []
    for model in args.models.split(","):
        weights = args.weights if model == "tinyvim-s" else None
        if on_gpu:
            for fp16 in (False, True):
                diff, same = parity(model, args.device, 8, weights, fp16)
                parity_rows.append({"model": model, "precision": "fp16" if fp16 else "fp32", "max_abs_diff": diff,
                                    "top1_agree": same})
        for batch in map(int, args.batches.split(",")):
            for mode, options in MODES.items():
                if not on_gpu and options:
                    continue  # CUDA graphs and autocast exist only on CUDA
                predictor = Predictor(model, backend="torch", device=args.device, **options)
                r = benchmark(predictor, batch=batch, warmup=args.warmup, iterations=args.iterations)
                rows.append({**r.as_dict(), "model": model, "mode": mode})  # our mode name, not "inference"
                predictor.close()
                del predictor
                if on_gpu:
                    torch.cuda.empty_cache()

    if parity_rows:
        print("| model | precision | max abs diff vs CPU (batch 8) | top-1 same |\n|---|---|---|---|")
        for p in parity_rows:
            print(f"| {p['model']} | {p['precision']} | {p['max_abs_diff']:.1e} | {p['top1_agree']} |")
        print()
    print("| model | batch | mode | p50 ms | p90 ms | p99 ms | images/s | device peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat, peak = r["latency"], r["cuda_peak_mb"]
        print(f"| {r['model']} | {r['batch']} | {r['mode']} | {lat['p50_ms']:.3f} | {lat['p90_ms']:.3f} | "
              f"{lat['p99_ms']:.3f} | {r['throughput_ips']:.0f} | {'-' if peak is None else f'{peak:.0f}'} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": gpu, "environment": environment_report(), "parity": parity_rows, "timing": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
