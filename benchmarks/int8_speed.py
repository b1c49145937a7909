"""INT8 QDQ vs FP32 in ONNX Runtime: TinyViM-S 224, batch 1, same process, interleaved medians.

Exports TinyViM-S (seed-7 fixture weights when ../shared is there, else seeded random), calibrates
on seeded synthetic images (speed does not depend on what the ranges are), quantizes every
Conv/Gemm (no groups kept in float: the fastest the profile can be) and times both sessions in
turn. Prints the ISA flags the CPU reports (ORT picks its int8 kernels from them) and sizes on disk.

    python benchmarks/int8_speed.py [--threads 2 --runs 100]
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, parse_bench_args  # noqa: E402

from tinyvim_deploy.calibration.data import load_calibration_set  # noqa: E402
from tinyvim_deploy.calibration.quantize import PROFILES, quantize_with_ranges  # noqa: E402
from tinyvim_deploy.calibration.ranges import get_ranges  # noqa: E402
from tinyvim_deploy.environment import cpu_description  # noqa: E402
from tinyvim_deploy.export.onnx_export import export_onnx  # noqa: E402
from tinyvim_deploy.models import get_spec  # noqa: E402
from tinyvim_deploy.runtimes.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from tinyvim_deploy.training.synthetic import make_dataset  # noqa: E402


def main() -> None:
    args = parse_bench_args(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    shared = Path(os.environ.get("TVD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    weights = shared / "fixtures" / "tinyvim" / "tinyvim_s_seed7_train_layout.pth"
    tmp = Path(tempfile.mkdtemp(prefix="tvd-int8-speed-"))
    fp32 = export_onnx("tinyvim-s", weights=weights if weights.is_file() else None, output=tmp / "fp32.onnx",
                       photos_dir=None).path
    images, _ = make_dataset(8, size=224, seed=1)
    calib = load_calibration_set(images, get_spec("tinyvim-s"), (224, 224), samples=None)
    ranges, _ = get_ranges(fp32, calib, "minmax")
    x = calib.tensors[:1]
    sessions = {"fp32": OnnxRuntimeBackend(fp32, threads=args.threads)}
    for name, profile in PROFILES.items():
        path = tmp / f"int8_{name}.onnx"
        quantize_with_ranges(fp32, path, ranges, "minmax", profile)
        sessions[f"int8 {name}"] = OnnxRuntimeBackend(path, threads=args.threads)
    medians = interleaved_medians({k: (lambda b=b: b.run(x)) for k, b in sessions.items()}, runs=args.runs, warmup=10)
    print(f"# TinyViM-S 224, batch 1, {args.threads} threads, median of {args.runs} interleaved runs")
    print(f"# CPU: {cpu_description()}\n")
    print("| model | median ms | speed-up vs fp32 | size MB | max abs diff vs fp32 |\n|---|---|---|---|---|")
    ref = sessions["fp32"].run(x)[0]
    for name, backend in sessions.items():
        size = Path(backend.artifact).stat().st_size / 1e6
        diff = float(np.abs(backend.run(x)[0] - ref).max())
        print(f"| {name} | {medians[name]:.2f} | {medians['fp32'] / medians[name]:.2f}× | {size:.1f} | {diff:.2e} |")
    print("\nWhere the time goes (ORT profiler, share of kernel time by op type, top 8):")
    for name in ("fp32", "int8 ort-cpu"):
        shares = op_time_shares(sessions[name].artifact, x, args.threads)
        print(f"- {name}: " + ", ".join(f"{op} {share:.0%}" for op, share in shares[:8]))


def op_time_shares(path, x, threads: int, runs: int = 30) -> list[tuple[str, float]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = threads, True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(path), options)
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return [(op, t / total) for op, t in per_op.most_common()]


if __name__ == "__main__":
    main()
