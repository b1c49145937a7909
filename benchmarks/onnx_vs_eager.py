"""TinyViM-S exported to ONNX in ORT vs the PyTorch eager model, and the SelectiveScan lowerings (issue 3).

Part 1 — lowerings: the tinyvim::SelectiveScan function alone, each body (scan, unrolled, chunked)
in ORT at TinyViM-S's stage-3 shape (K=4 x 168 channels, N=8), L = 49 and 256, batch 1.
Part 2 — whole model: TinyViM-S 224, batch 1, exported with each lowering; ORT vs eager PyTorch
(reparameterized and not), interleaved in one run, median of --runs. Export time is reported too.
ORT runs with allow_spinning=0 because it shares the process with torch (toolchain notes §3).
    python benchmarks/onnx_vs_eager.py [--threads 2] [--runs 50]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, parse_bench_args  # noqa: E402
from scan_speed import make_inputs  # noqa: E402

import tinyvim_deploy as tv  # noqa: E402
from tinyvim_deploy.environment import cpu_description  # noqa: E402
from tinyvim_deploy.export import ops as X  # noqa: E402
from tinyvim_deploy.export.onnx_export import export_onnx  # noqa: E402
from tinyvim_deploy.export.validate import ort_session  # noqa: E402


def lowering_table(threads: int, runs: int) -> None:
    print("\n| SelectiveScan body | L | ORT ms | max abs diff vs NumPy | function nodes |")
    print("|---|---|---|---|---|")
    for L in (49, 256):
        names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
        feeds = {n: t.numpy() for n, t in zip(names, make_inputs(L))}
        ref = X.selective_scan_np(**feeds)
        for impl in X.SCAN_IMPLS:
            model = X.single_op_model("SelectiveScan", feeds, 1, scan_impl=impl)
            session = ort_session(model.SerializeToString(), threads)
            got = session.run(None, feeds)[0]
            t = interleaved_medians({impl: lambda: session.run(None, feeds)}, runs)[impl]
            print(f"| {impl} | {L} | {t:.2f} | {np.abs(got - ref).max():.1e} | {len(model.functions[0].node)} |")


def model_table(threads: int, runs: int) -> None:
    weights = None
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    eager = tv.create_model("tinyvim-s")
    fused = tv.reparameterize(eager)
    xt = torch.from_numpy(x)
    fns = {"torch eager": lambda: eager(xt), "torch eager (reparameterized)": lambda: fused(xt)}
    export_s, parity = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in X.SCAN_IMPLS:
            t0 = time.perf_counter()
            result = export_onnx("tinyvim-s", weights=weights, output=Path(tmp) / f"{impl}.onnx", scan_impl=impl)
            export_s[impl] = time.perf_counter() - t0
            parity[impl] = result.report.max_abs
            session = ort_session(str(result.path), threads)
            fns[f"ORT ({impl})"] = lambda s=session: s.run(None, {"image": x})
        with torch.inference_mode():
            times = interleaved_medians(fns, runs)
    base = times["torch eager"]
    print("\n| TinyViM-S 224, batch 1 | median ms | ratio to eager | export s | max abs diff vs torch |")
    print("|---|---|---|---|---|")
    for name, ms in times.items():
        impl = name[5:-1] if name.startswith("ORT") else None
        extra = f"{export_s[impl]:.1f} | {parity[impl]:.1e}" if impl else "- | -"
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {extra} |")


def main() -> None:
    args = parse_bench_args(__doc__)
    import onnxruntime

    print(f"# {cpu_description()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"{args.threads} threads, median of {args.runs} interleaved runs")
    lowering_table(args.threads, args.runs)
    model_table(args.threads, args.runs)


if __name__ == "__main__":
    main()
