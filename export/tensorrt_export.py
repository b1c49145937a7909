"""ONNX -> TensorRT engine (TensorRT 10.x and 11.x Python API): prepare, build, write, validate.

1. **Prepare** (pure ONNX, runs anywhere): the ``tinyvim`` functions are inlined into standard ops
   (or, with ``--plugin-lib``, kept as bare ``tinyvim::`` nodes for the user's plugin creators).
   FP16 is written into the graph (onnxconverter-common, I/O kept float32) with the selective-scan
   sub-graph, LayerNorm and Softmax left in FP32. The precision lives in the ONNX graph because
   TensorRT 11 builds *strongly typed* networks only (its FP16/INT8 builder flags are gone); INT8
   is the Q/DQ model of ``tinyvim_deploy.calibration`` (explicit quantization; no calibrator).
   The prepared graph is validated in ONNX Runtime against PyTorch before any GPU work.
2. **Build**: a strongly typed network (TensorRT 10: ``--no-strongly-typed`` instead sets the FP16/INT8
   flags and pins the FP32 layers with precision constraints), an optimisation profile for the
   batch, workspace limit, timing cache reuse, DLA core with GPU fallback, progress callbacks.
3. **Write** the plain serialized engine plus its JSON sidecar (``runtimes/tensorrt.py``), atomically,
   only after the engine itself has been run and compared with PyTorch on the same inputs.

Type-checked with mypy against ``tensorrt-stubs``; never executed by our CI (no GPU, no TensorRT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from tinyvim_deploy.errors import ExportError, ValidationError
from tinyvim_deploy.export.ops import DOMAIN
from tinyvim_deploy.runtimes.tensorrt import BatchProfile, EngineSidecar, import_tensorrt, trt_major

if TYPE_CHECKING:
    import tensorrt as trt

PRECISIONS = ("fp32", "fp16", "int8")
# Kept in FP32 in FP16 builds: the scan (exp/softplus of the decay, a long product of factors < 1:
# OPS.md, spec §11.10) and the normalisations whose reductions lose accuracy in half precision.
FP32_OP_TYPES = ("LayerNormalization", "Softmax")
# Segmentors add their prototype / SSA tails: the matmuls after the softmaxes and the L2 norms of the
# cosine classifier (cgrseg.md §10 #5, ssa.md §8 #1–3); EfficientFormerV2's attention matmuls go with them.
FP32_OP_TYPES_SEGMENTATION = FP32_OP_TYPES + ("MatMul", "ReduceL2")
# Detectors: the NMS plugin takes the float32 boxes and scores the export validated (its own inputs may be
# FP16, but an FP16 box at 320 px is only 0.25 px exact, and a cast before it costs nothing).
FP32_OP_TYPES_DETECTION = FP32_OP_TYPES + ("EfficientNMS_TRT",)
FP32_FUNCTION_PREFIX = f"{DOMAIN}.SelectiveScan/"
# Relative tolerance of a build against its reference: max abs diff <= rtol * max(1, max |reference|).
RTOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}

ProgressCallback = Callable[[str, int, int | None], None]


# --------------------------------------------------------------------------------------------------
# 1. Prepare the ONNX graph
# --------------------------------------------------------------------------------------------------


def name_function_nodes(model: onnx.ModelProto) -> None:
    """Name every node of the ``tinyvim`` function bodies ``tinyvim.<Op>/<i>_<type>`` (sub-graphs too).

    ``onnx.inliner`` keeps a node's name (adding a call-site suffix) and TensorRT names its layers
    after the ONNX nodes, so after inlining we can still tell which layers are the scan.
    """

    def visit(nodes: Any, prefix: str) -> None:
        for i, node in enumerate(nodes):
            if not node.name:
                node.name = f"{prefix}{i}_{node.op_type}"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node, f"{node.name}/")

    for function in model.functions:
        if function.domain == DOMAIN:
            visit(function.node, f"{DOMAIN}.{function.name}/")


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Top-level nodes to keep in FP32: the inlined scan and the FP32 op types of the model's task."""
    from tinyvim_deploy.export.metadata import read_metadata

    task = read_metadata(model).get("task", "classification")
    op_types = {"segmentation": FP32_OP_TYPES_SEGMENTATION, "detection": FP32_OP_TYPES_DETECTION}.get(task, FP32_OP_TYPES)
    return [n.name for n in model.graph.node
            if n.name.startswith(FP32_FUNCTION_PREFIX) or n.op_type in op_types
            or (n.domain == DOMAIN and n.op_type == "SelectiveScan")]


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def prepare_onnx(model: onnx.ModelProto, precision: str, *, plugins: bool = False) -> onnx.ModelProto:
    """The graph TensorRT is given for ``precision`` (see the module docstring)."""
    import onnx.inliner

    if precision not in PRECISIONS:
        raise ExportError(f"Unknown precision {precision!r}: choose {', '.join(PRECISIONS)}.")
    if precision == "int8" and not is_qdq(model):
        raise ExportError("An INT8 engine is built from a Q/DQ model: export with --int8 --calib-data DIR "
                          "(TensorRT profile), not from a float ONNX.")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never modify the caller's proto
    if plugins:  # bare tinyvim:: nodes; TensorRT's ONNX parser maps them to the plugin creators by name
        keep = [f for f in model.functions if f.domain != DOMAIN]
        del model.functions[:]
        model.functions.extend(keep)
    else:
        name_function_nodes(model)
        model = onnx.inliner.inline_local_functions(model)
        keep_ops = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(keep_ops)
    if precision == "fp16":
        model = to_mixed_fp16(model, fp32_node_names(model))
    return model


def to_mixed_fp16(model: onnx.ModelProto, keep_fp32: list[str]) -> onnx.ModelProto:
    """FP16 weights and activations except ``keep_fp32`` nodes (Casts around them); float32 I/O."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # it warns for every weight it clamps into the FP16 range
        warnings.simplefilter("ignore")
        converted: onnx.ModelProto = float16.convert_float_to_float16(
            model, keep_io_types=True, node_block_list=keep_fp32)
    return converted


# --------------------------------------------------------------------------------------------------
# 2. Build
# --------------------------------------------------------------------------------------------------


def parse_batch_profile(text: str | None, static_batch: int | None) -> BatchProfile:
    """``--batch-profile MIN,OPT,MAX`` for a dynamic-batch ONNX; a static ONNX has exactly its batch."""
    if static_batch is not None:
        if text is not None:
            raise ExportError("--batch-profile needs a dynamic batch: add --dynamic-batch.")
        return BatchProfile(static_batch, static_batch, static_batch)
    if text is None:
        return BatchProfile(1, 1, 8)
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ExportError(f"--batch-profile takes MIN,OPT,MAX (e.g. 1,4,8), got {text!r}.")
    try:
        return BatchProfile(*values)
    except Exception as e:
        raise ExportError(str(e)) from None


def check_build_mode(tensorrt_version: str, *, strongly_typed: bool, precision: str, dla_core: int | None) -> None:
    """Combinations TensorRT refuses, said before a build starts."""
    if not strongly_typed and trt_major(tensorrt_version) >= 11:
        raise ExportError(f"TensorRT {tensorrt_version} builds strongly typed networks only: drop "
                          "--no-strongly-typed (the precision is already in the graph).")
    if dla_core is not None and precision == "fp32":
        raise ExportError("DLA runs FP16 or INT8 layers only: add --precision fp16 (or int8) for --dla-core.")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    profile: BatchProfile = BatchProfile(1, 1, 1)
    strongly_typed: bool = True
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    plugin_libs: tuple[str, ...] = ()


def _progress_monitor(report: ProgressCallback) -> trt.IProgressMonitor:
    """A ``trt.IProgressMonitor`` that forwards phases and steps to ``report`` (never cancels)."""
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            report(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            report(phase_name, step + 1, None)
            return True

        def phase_finish(self, phase_name: str) -> None:
            report(phase_name, -1, None)

    return Monitor()


def _pin_fp32_layers(network: trt.INetworkDefinition, fp32_names: list[str]) -> int:
    """Weakly typed FP16 builds (TensorRT 10 only): keep the named layers and their outputs in FP32."""
    import tensorrt as trt

    prefixes = tuple(fp32_names)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not layer.name.startswith(prefixes):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(onnx_bytes: bytes, input_name: str, input_hw: tuple[int, int], options: BuildOptions,
                 fp32_names: list[str], progress: ProgressCallback | None = None) -> bytes:
    """Serialized engine for the prepared ONNX (and the timing cache written back, if one is used)."""
    import tensorrt as trt

    from tinyvim_deploy.fileio import atomic_output

    check_build_mode(trt.__version__, strongly_typed=options.strongly_typed, precision=options.precision,
                     dla_core=options.dla_core)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    for lib in options.plugin_libs:
        builder.get_plugin_registry().load_library(lib)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if options.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser refused the model: {errors[:500]}")

    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # exact FP32, as validated; TF32 rounds matmul inputs to 10 bits
    if not options.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16 if options.precision == "fp16" else trt.BuilderFlag.INT8)
        if options.precision == "fp16":
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            _pin_fp32_layers(network, fp32_names)

    profile = builder.create_optimization_profile()
    shape_min, shape_opt, shape_max = options.profile.shapes(input_hw)
    profile.set_shape(input_name, trt.Dims(list(shape_min)), trt.Dims(list(shape_opt)), trt.Dims(list(shape_max)))
    config.add_optimization_profile(profile)

    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise ExportError(f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA cores.")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        if options.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    cache_path = options.timing_cache
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if progress is not None:
        config.progress_monitor = _progress_monitor(progress)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT could not build the engine (its log above says why).")
    if cache_path is not None:
        with atomic_output(cache_path) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def gpu_of_this_machine() -> tuple[str, str]:
    from tinyvim_deploy.runtimes.tensorrt import cuda_call, gpu_identity, import_cudart

    cudart = import_cudart()
    device = cuda_call(cudart.cudaGetDevice())
    return gpu_identity(cudart, int(device))


# --------------------------------------------------------------------------------------------------
# 3. The whole export
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TensorRTExport:
    engine: Path
    sidecar: EngineSidecar
    onnx_path: Path
    prepared_check: Any  # ValidationReport of the prepared graph in ONNX Runtime (None with plugins)
    engine_check: Any  # ValidationReport of the engine on the GPU
    build_seconds: float


def tolerance(precision: str, reference: np.ndarray) -> float:
    return RTOL[precision] * max(1.0, float(np.abs(reference).max()))


def default_engine_name(onnx_path: Path, precision: str) -> Path:
    return onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")


@contextlib.contextmanager
def _written_together(engine: Path, sidecar: Path) -> Iterator[tuple[Path, Path]]:
    """Both files appear only if the block succeeds (engine last: a sidecar alone is never left)."""
    from tinyvim_deploy.fileio import atomic_output

    with atomic_output(engine) as engine_tmp, atomic_output(sidecar) as sidecar_tmp:
        yield engine_tmp, sidecar_tmp


def export_tensorrt(onnx_path: Path, torch_model: Any, *, output: Path | None, options: BuildOptions,
                    inputs: dict[str, np.ndarray], reference_onnx: Path | None = None,
                    progress: ProgressCallback | None = None) -> TensorRTExport:
    """Build, validate and write an engine from an exported (float or Q/DQ) ONNX file.

    ``inputs`` are validation batches; the reference is ``torch_model`` (PyTorch), or for INT8 the
    Q/DQ model in ONNX Runtime (``reference_onnx``), since INT8 is judged against its own model.
    """
    from tinyvim_deploy.export.metadata import read_metadata
    from tinyvim_deploy.export.nms import cut_before_nms, has_efficient_nms
    from tinyvim_deploy.fileio import file_sha256
    from tinyvim_deploy.runtimes.tensorrt import TensorRTBackend, sidecar_path

    trt_module = import_tensorrt()
    check_build_mode(trt_module.__version__, strongly_typed=options.strongly_typed, precision=options.precision,
                     dla_core=options.dla_core)
    source = onnx.load(str(onnx_path))
    metadata = read_metadata(source)
    prepared = prepare_onnx(source, options.precision, plugins=bool(options.plugin_libs))
    reference = reference_outputs(torch_model, reference_onnx, inputs)
    judge = _judge_for(metadata, options.precision)
    prepared_check = None
    if not options.plugin_libs:  # what TensorRT will compute, run first where it is cheap: ORT on the CPU
        before_nms = cut_before_nms(prepared) if has_efficient_nms(prepared) else prepared
        prepared_check = judge(lambda x: run_onnx(before_nms, x), reference)
        if not prepared_check.passed:
            raise ValidationError(f"The {options.precision} graph prepared for TensorRT differs from its reference "
                                  f"in ONNX Runtime (max abs diff {prepared_check.max_abs:.2e}); nothing was built.")

    _, h, w = json.loads(metadata["input_size"])
    input_name = source.graph.input[0].name
    t0 = time.perf_counter()
    plan = build_engine(prepared.SerializeToString(), input_name, (h, w), options, fp32_node_names(prepared), progress)
    build_seconds = time.perf_counter() - t0

    gpu_name, capability = gpu_of_this_machine()
    engine = output or default_engine_name(onnx_path, options.precision)
    sidecar = EngineSidecar(
        metadata=metadata, tensorrt_version=trt_module.__version__, gpu_name=gpu_name, compute_capability=capability,
        precision=options.precision, strongly_typed=options.strongly_typed, input_name=input_name,
        batch_profile=options.profile, onnx_sha256=file_sha256(onnx_path),
        engine_sha256=hashlib.sha256(plan).hexdigest(), dla_core=options.dla_core, plugin_libs=options.plugin_libs,
    )
    with _written_together(engine, sidecar_path(engine)) as (engine_tmp, sidecar_tmp):
        engine_tmp.write_bytes(plan)
        sidecar_tmp.write_text(json.dumps(sidecar.to_json(), indent=2) + "\n", encoding="utf-8")
        with TensorRTBackend(engine_tmp, device="cuda", sidecar=sidecar) as backend:
            engine_check = judge(backend.run, reference)
        if not engine_check.passed:
            raise ValidationError(f"The TensorRT engine differs from its reference (max abs diff "
                                  f"{engine_check.max_abs:.2e} > {engine_check.atol:.2e}); nothing was written.")
    return TensorRTExport(engine, sidecar, onnx_path, prepared_check, engine_check, build_seconds)


Reference = dict[str, tuple[np.ndarray, list[np.ndarray]]]  # input name -> (batch, reference outputs)
Judge = Callable[[Callable[[np.ndarray], list[np.ndarray]], Reference], Any]


def _judge_for(metadata: dict[str, str], precision: str) -> Judge:
    """How a run of the prepared graph or of the engine is compared with the reference, by task."""
    from tinyvim_deploy.tasks import get_task

    task = metadata.get("task", "classification")
    if not get_task(task).has_nms:
        return lambda run, reference: compare_outputs(run, reference, precision, task)
    from tinyvim_deploy.export.metadata import class_names_from_metadata
    from tinyvim_deploy.export.nms import NMSConfig

    nms_config = NMSConfig.from_metadata(metadata)
    num_classes = len(class_names_from_metadata(metadata)) or None
    return lambda run, reference: compare_detector_outputs(run, reference, precision, nms_config, num_classes)


def reference_outputs(torch_model: Any, reference_onnx: Path | None, inputs: dict[str, np.ndarray]) -> Reference:
    """name -> (input batch, reference outputs: logits, or a detector's raw boxes and scores)."""
    if reference_onnx is not None:
        model = onnx.load(str(reference_onnx))
        return {name: (x, run_onnx(model, x)) for name, x in inputs.items()}
    import torch

    reference = {}
    with torch.no_grad():
        for name, x in inputs.items():
            out = torch_model(torch.from_numpy(x))
            reference[name] = (x, [t.numpy() for t in out] if isinstance(out, (tuple, list)) else [out.numpy()])
    return reference


def run_onnx(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    """Run a model (given as a proto) in ONNX Runtime on the CPU, in slices of its static batch if it has one."""
    from tinyvim_deploy.runtimes.onnxruntime import ort_session, run_session

    return run_session(ort_session(model.SerializeToString()), batch)


def compare_outputs(run: Callable[[np.ndarray], list[np.ndarray]], reference: Reference, precision: str,
                    task: str = "classification") -> Any:
    """A ValidationReport of ``run`` against the reference, with the precision's tolerance."""
    from tinyvim_deploy.export.validate import ValidationReport
    from tinyvim_deploy.tasks import get_task

    judge = get_task(task)
    checks = []
    atol = 0.0
    for name, (x, (ref, *_)) in reference.items():
        atol = max(atol, tolerance(precision, ref))
        checks += judge.compare([ref], run(x)[:1], name, tolerance(precision, ref), x)
    return ValidationReport(checks, atol)


def compare_detector_outputs(run: Callable[[np.ndarray], list[np.ndarray]], reference: Reference, precision: str,
                             nms_config: Any, num_classes: int | None) -> Any:
    """A detector's run against PyTorch's raw boxes and scores, whichever of its two forms ``run`` returns.

    Raw outputs (the graph before the NMS plugin, or an engine exported with ``--nms none``): boxes / side
    and scores within the precision's tolerance. The contract's four outputs (the engine with
    EfficientNMS_TRT): the best detection of each image against the reference NMS on PyTorch's outputs,
    plus the contract's invariants (``validate.top_detection_check``); the share of all reference
    detections found is reported, not judged, since near-tied scores may swap under FP16.
    """
    from tinyvim_deploy.export.validate import (
        Check,
        ValidationReport,
        end_to_end_check,
        raw_detection_checks,
        top_detection_check,
    )
    from tinyvim_deploy.tasks.nms import Detections

    atol = RTOL[precision]  # boxes / side and scores both lie in [0, 1]
    checks: list[Check] = []
    for name, (x, (ref_boxes, ref_scores)) in reference.items():
        outputs = run(x)
        if len(outputs) == 2:
            checks += raw_detection_checks(name, x, ref_boxes, ref_scores, outputs[0], outputs[1], atol)
            continue
        got = Detections(*outputs)
        checks.append(top_detection_check(name, x, ref_boxes, ref_scores, got, atol, nms_config.score_threshold,
                                          num_classes))
        checks.append(end_to_end_check(name, ref_boxes, ref_scores, got, nms_config))
    return ValidationReport(checks, atol)
