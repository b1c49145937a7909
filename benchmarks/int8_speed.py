"""INT8 QDQ vs FP32 in ONNX Runtime: TinyViM-S 224, batch 1, same process, interleaved medians.

Exports TinyViM-S (seed-7 fixture weights when ../shared is there, else seeded random), calibrates
on seeded synthetic images (speed does not depend on what the ranges are), quantizes every
Conv/Gemm (no groups kept in float: the fastest the profile can be) and times both sessions in
turn. Prints the ISA flags the CPU reports (ORT picks its int8 kernels from them) and sizes on disk.

Then the ceiling: how fast the FP32 graph would be if some ops cost nothing. Each op of a group is
cut out and its output fed, precomputed, as a graph input (same values, so everything downstream
does the same work), and that graph is timed against the FP32 one in the same interleaved run.
No INT8 scheme that speeds up only those ops can beat FP32 / (FP32 with them free). Last, the
ORT profiler's kernel time per kind of convolution, FP32 vs INT8: what the INT8 kernels give.

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
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, parse_bench_args  # noqa: E402

from tinyvim_deploy.calibration.data import load_calibration_set  # noqa: E402
from tinyvim_deploy.calibration.quantize import PROFILES, quantize_with_ranges  # noqa: E402
from tinyvim_deploy.calibration.ranges import get_ranges  # noqa: E402
from tinyvim_deploy.environment import cpu_description  # noqa: E402
from tinyvim_deploy.export.onnx_export import export_onnx  # noqa: E402
from tinyvim_deploy.export.validate import ort_session  # noqa: E402
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
    # Depthwise convs are slower in INT8 on ORT's CPU EP (table at the end): the variant keeps them float.
    depthwise = [n.name for n in onnx.load(str(fp32)).graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    quantize_with_ranges(fp32, tmp / "int8_dw_float.onnx", ranges, "minmax", PROFILES["ort-cpu"], nodes_to_exclude=depthwise)
    sessions["int8 ort-cpu, depthwise convs float"] = OnnxRuntimeBackend(tmp / "int8_dw_float.onnx", threads=args.threads)
    medians = interleaved_medians({k: (lambda b=b: b.run(x)) for k, b in sessions.items()}, runs=args.runs, warmup=10)
    print(f"# TinyViM-S 224, batch 1, {args.threads} threads, median of {args.runs} interleaved runs")
    print(f"# CPU: {cpu_description()}\n")
    print("| model | median ms | speed-up vs fp32 | size MB | max abs diff vs fp32 |\n|---|---|---|---|---|")
    ref = sessions["fp32"].run(x)[0]
    for name, backend in sessions.items():
        size = Path(backend.artifact).stat().st_size / 1e6
        diff = float(np.abs(backend.run(x)[0] - ref).max())
        print(f"| {name} | {medians[name]:.2f} | {medians['fp32'] / medians[name]:.2f}× | {size:.1f} | {diff:.2e} |")
    print("\nWhere the time goes (ORT profiler, share of kernel time by op type, top 10):")
    for name in ("fp32", "int8 ort-cpu"):
        shares = op_time_shares(sessions[name].artifact, x, args.threads)
        print(f"- {name}: " + ", ".join(f"{op} {share:.0%}" for op, share in shares[:10]))
    ceiling_table(fp32, x, args.threads, args.runs)
    conv_kind_table(fp32, sessions["int8 ort-cpu"].artifact, x, args.threads, tmp)


FREE_GROUPS = {
    "Conv": {"Conv"},
    "Conv, MatMul, Gemm, Einsum": {"Conv", "MatMul", "Gemm", "Einsum"},
    "SelectiveScan": {"SelectiveScan"},
    "Conv and SelectiveScan": {"Conv", "SelectiveScan"},
}


def with_free_ops(model: onnx.ModelProto, values: dict[str, np.ndarray], x: np.ndarray,
                  op_types: set[str]) -> tuple[bytes, dict[str, np.ndarray]]:
    """The graph with every top-level node of ``op_types`` cut out and its output made a graph input
    (fed the value it had), so the rest of the graph does exactly the work it did before."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: the caller's stays whole
    cut = [n for n in model.graph.node if n.op_type in op_types]
    feeds = {"image": x}
    for node in cut:
        value = values[node.output[0]]
        model.graph.node.remove(node)
        model.graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, value.shape))
        feeds[node.output[0]] = np.ascontiguousarray(value)
    unused = {i for n in cut for i in n.input} - {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model.SerializeToString(), feeds


def node_outputs(model: onnx.ModelProto, x: np.ndarray, op_types: set[str]) -> dict[str, np.ndarray]:
    """The values of the first output of every top-level node of ``op_types``, from one run."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n.output[0])
                              for n in model.graph.node if n.op_type in op_types)
    session = ort_session(probe.SerializeToString())
    return dict(zip((o.name for o in session.get_outputs()), session.run(None, {"image": x})))


def ceiling_table(fp32, x: np.ndarray, threads: int, runs: int) -> None:
    model = onnx.load(str(fp32))
    values = node_outputs(model, x, set().union(*FREE_GROUPS.values()))
    base = ort_session(str(fp32), threads)
    reference = base.run(None, {"image": x})[0]
    fns = {"fp32": lambda: base.run(None, {"image": x})}
    for label, ops in FREE_GROUPS.items():
        graph, feeds = with_free_ops(model, values, x, ops)
        session = ort_session(graph, threads)
        assert np.allclose(session.run(None, feeds)[0], reference, atol=1e-4)
        fns[label] = lambda s=session, f=feeds: s.run(None, f)
    medians = interleaved_medians(fns, runs=runs, warmup=10)
    print("\nCeiling: FP32 with these ops free (their outputs fed precomputed; same interleaved run):")
    print("| ops that cost nothing | median ms | FP32 / this = the most any INT8 of them can give |\n|---|---|---|")
    for label, ms in medians.items():
        if label != "fp32":
            print(f"| {label} | {ms:.2f} | {medians['fp32'] / ms:.2f}× |")
    print(f"| (none: FP32) | {medians['fp32']:.2f} | 1.00× |")


def conv_kind_table(fp32, int8, x: np.ndarray, threads: int, tmp: Path, runs: int = 30) -> None:
    """Kernel time per kind of convolution (pointwise, 3×3 stride 2, depthwise), FP32 vs INT8."""
    times = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        per_node, optimized = node_kernel_times(path, x, threads, runs, tmp / f"{name}_optimized.onnx")
        kinds = collections.Counter()
        weight_dims = {t.name: list(t.dims) for t in optimized.graph.initializer}
        for node in optimized.graph.node:
            if "Conv" in node.op_type and node.name in per_node:
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                weight = weight_dims.get(node.input[3 if node.op_type.startswith("QLinear") else 1], [])
                kernel = "×".join(map(str, attrs.get("kernel_shape", weight[2:]) or ["?"]))
                depthwise = attrs.get("group", 1) > 1
                stride = max(attrs.get("strides", [1]))
                kind = f"{'depthwise' if depthwise else 'dense'} {kernel}" + (f" stride {stride}" if stride > 1 else "")
                kinds[kind] += per_node[node.name]
        times[name] = kinds
    print("\nConvolution kernel time per run by kind (ORT profiler):")
    print("| kind | FP32 ms | INT8 ms | INT8 speed-up |\n|---|---|---|---|")
    for kind, t32 in times["fp32"].most_common():
        t8 = times["int8"].get(kind)  # absent: that conv kept float (or fused away) in the INT8 graph
        print(f"| {kind} | {t32:.2f} | " + (f"{t8:.2f} | {t32 / t8:.2f}× |" if t8 else "- | - |"))


def kernel_events(path, x: np.ndarray, threads: int, runs: int, optimized_path: Path | None = None) -> list[dict]:
    """The ORT profiler's per-node kernel events over ``runs`` runs (and the optimized graph, if asked)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = threads, True
    options.log_severity_level = 3  # the optimized graph's hardware-specific warning is expected
    if optimized_path:
        options.optimized_model_filepath = str(optimized_path)
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(path), options)
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def node_kernel_times(path, x: np.ndarray, threads: int, runs: int, optimized_path: Path):
    """Mean kernel ms per run of each node of ORT's optimized graph, and that graph."""
    per_node = collections.Counter()
    for e in kernel_events(path, x, threads, runs, optimized_path):
        per_node[e["name"].removesuffix("_kernel_time")] += e["dur"] / 1e3 / runs
    return per_node, onnx.load(str(optimized_path))


def op_time_shares(path, x, threads: int, runs: int = 30) -> list[tuple[str, float]]:
    per_op = collections.Counter()
    for e in kernel_events(path, x, threads, runs):
        per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return [(op, t / total) for op, t in per_op.most_common()]


if __name__ == "__main__":
    main()
