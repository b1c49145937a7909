"""Core ML packages (``.mlpackage``, ML Program) for iPhone/Mac, through ``torch.export`` + coremltools.

Recipe (measured in shared notes/toolchain.md §5/§8):
- the reparameterized model, scan and Laplace ops in their pure-PyTorch form (no custom ops);
- ``torch.export(...).run_decompositions({})`` then ``ct.convert`` (tracing breaks with torch 2.13);
- an ``ImageType`` input: Core ML applies one scalar scale and a per-channel bias, so the pixels are
  mapped to ``x/255 - mean`` there and the per-channel ``1/std`` is folded into the stem conv
  (exact: zero padding stays zero);
- a ``ClassifierConfig`` with the class names; author/licence/version/description metadata and our
  ``tinyvim_deploy.*`` metadata in ``user_defined_metadata``;
- compute precision FP16 (default) or FP32; in FP16 the selective scan's ops stay FP32 (spec
  §11.10: a product of up to L decays below 1), found by the module stack ``torch.export`` records
  for :class:`~tinyvim_deploy.models.ops.SelectiveScan`, and so do a segmentation head's own ops
  (prototype softmaxes and matmuls, SSA's cosine tail) (``scan_fp32=False``: all FP16, all on the
  Neural Engine);
- optional INT8 weights (per-channel linear symmetric), and W8A8: activations calibrated by
  ``coremltools.optimize.coreml.linear_quantize_activations`` on the INT8 calibration images.
  That function runs the model (``MLModel.predict``), so W8A8 needs macOS; elsewhere it is refused
  before anything is converted. (coremltools' PyTorch-side quantizers cannot be used: its PT2E
  quantizer imports ``torch.ao.quantization.quantizer``, gone in torch 2.13, and its FX
  ``LinearQuantizer`` cannot trace TinyViM's shape-dependent control flow.)

Core ML cannot predict on Linux, so the export is checked here by the folding's exactness against
the PyTorch model, by the program's op list, and by the package's input/output description.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from tinyvim_deploy.errors import BackendUnavailableError, ExportError
from tinyvim_deploy.fileio import honour_umask
from tinyvim_deploy.tasks import get_task

# Ops that the Neural Engine does not run (Core ML moves them, and often their neighbours, to the
# CPU). Reported after conversion so that a user knows before profiling in Xcode.
NOT_ON_NEURAL_ENGINE = frozenset({"scatter", "scatter_nd", "scatter_along_axis", "gather_nd", "while_loop", "cond",
                                  "cumsum", "non_zero"})
PRECISIONS = ("fp16", "fp32")


@dataclasses.dataclass
class CoreMLExportResult:
    path: Path
    precision: str
    weights_int8: bool
    size_mb: float
    op_counts: dict[str, int]
    flagged_ops: dict[str, int]  # ops from NOT_ON_NEURAL_ENGINE found in the program
    fold_max_abs_diff: float  # stem-folded model vs the original, same input (PyTorch)
    seconds: float
    fp32_ops: dict[str, int] = dataclasses.field(default_factory=dict)  # op type -> count of FP32 compute ops
    w8a8: bool = False


def import_coremltools():
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch version not tested", no native lib on Linux
            import coremltools as ct
    except ImportError:
        raise BackendUnavailableError(
            "coremltools is not installed: pip install 'tinyvim-deploy[coreml]' (Linux converts; macOS also predicts)."
        ) from None
    _register_missing_ops()
    return ct


def _register_missing_ops() -> None:
    """``aten.alias`` (left by run_decompositions) has no coremltools translation: it is an identity."""
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op

    if "alias" in _TORCH_OPS_REGISTRY:
        return

    def alias(context, node):
        context.add(_get_inputs(context, node, expected=1)[0], node.name)

    register_torch_op(alias)


def fold_input_std(model: torch.nn.Module, std) -> torch.nn.Module:
    """Divide the first 3-channel conv's weights by the per-channel std (Core ML has one scalar scale)."""
    stem = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3), None)
    if stem is None:
        raise ExportError("No 3-channel stem convolution to fold the input normalisation into.")
    with torch.no_grad():
        stem.weight.div_(torch.tensor(std, dtype=stem.weight.dtype).view(1, 3, 1, 1))
    return model


# Modules whose own (non-submodule) ops stay FP32 in an FP16 program: the selective scan, and a
# segmentation head's prototype / SSA tail (softmaxes, prototype matmuls, norms: cgrseg.md §10, ssa.md §8).
FP32_MODULES = (".SelectiveScan", ".CGRSegHead", ".DPG")


def fp32_node_names(program) -> set[str]:
    """Nodes of an exported program to keep in FP32 (their MIL ops keep these names).

    A node belongs to the innermost module on its stack: a SelectiveScan's every op, but for a head
    only what its own forward computes (its convs and linears live in submodules and go FP16).
    """
    names = set()
    for node in program.graph_module.graph.nodes:
        stack = [cls for _, cls in (node.meta.get("nn_module_stack") or {}).values()]
        if any(cls.endswith(".SelectiveScan") for cls in stack) or (stack and stack[-1].endswith(FP32_MODULES)):
            names.add(node.name)
    return names


def export_coreml(model_name: str, *, weights=None, output=None, input_size=None, precision: str = "fp16",
                  weights_int8: bool = False, minimum_target: str = "iOS16", scan_fp32: bool = True,
                  w8a8: bool = False, calib_data=None, calib_samples: int = 128, nms_config=None) -> CoreMLExportResult:
    """Convert, check the stem folding, save atomically. Detectors become a Pipeline: the ML program (confidence
    [N,C'], normalised cx,cy,w,h coordinates) followed by Core ML's NonMaximumSuppression (``nms_config``)."""
    import copy
    import sys

    import tinyvim_deploy
    from tinyvim_deploy.export.metadata import build_metadata
    from tinyvim_deploy.models import check_input_size, create_model, parse_input_size, reparameterize

    if precision not in PRECISIONS:
        raise ExportError(f"Unknown Core ML precision {precision!r}: choose {', '.join(PRECISIONS)}.")
    if w8a8:
        if calib_data is None:
            raise ExportError("W8A8 needs calibration images: pass --calib-data DIR (or a list file).")
        if sys.platform != "darwin":
            raise BackendUnavailableError(
                "W8A8 calibrates activations by running the model (coremltools' linear_quantize_activations "
                "uses MLModel.predict), which needs macOS: run this export on a Mac; --int8-weights works here.")
        minimum_target = "iOS17"  # quantize/dequantize of activations are iOS17 ops
    ct = import_coremltools()
    t0 = time.perf_counter()
    model = create_model(model_name, weights=weights)
    spec = model.spec
    hw = parse_input_size(input_size, tuple(spec.input_size[1:]))
    check_input_size(*hw, spec.size_multiple)
    task = get_task(spec.task)
    detector = task.has_nms
    if w8a8 and detector:
        raise ExportError("W8A8 Core ML export of detectors is not implemented: use --int8-weights.")
    deploy = reparameterize(model)
    if hasattr(deploy, "prepare_for_size"):  # segmentors: size-dependent constants (attention biases)
        deploy.prepare_for_size(*hw)
    folded = fold_input_std(copy.deepcopy(deploy), spec.std)
    if detector:
        from tinyvim_deploy.export.nms import coreml_detection_wrapper

        deploy, folded = coreml_detection_wrapper(deploy, hw), coreml_detection_wrapper(folded, hw)

    # Exactness of the folding, in PyTorch (Core ML itself cannot run here).
    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        pairs = zip(*(y if isinstance(y, tuple) else (y,) for y in (deploy(x / std), folded(x))))
        fold_diff = max(float((a - b).abs().max()) for a, b in pairs)

    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.export.export(folded, (x,)).run_decompositions({})
        mean = [float(m) for m in spec.mean]
        if precision == "fp32":
            compute_precision = ct.precision.FLOAT32
        elif scan_fp32:
            keep = fp32_node_names(program)
            compute_precision = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.name not in keep)
        else:
            compute_precision = ct.precision.FLOAT16
        mlmodel = ct.convert(
            program,
            inputs=[ct.ImageType(name="image", shape=(1, 3, *hw), scale=1 / 255.0, bias=[-m for m in mean],
                                 color_layout=ct.colorlayout.RGB)],
            **task.coreml_convert_options(ct, spec),  # the task's outputs (classifier labels, logits, NMS inputs)
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, minimum_target),
            compute_precision=compute_precision,
        )
        if w8a8:
            mlmodel = _quantize_activations(mlmodel, calib_data, spec, hw, calib_samples)
        if weights_int8 or w8a8:
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                              granularity="per_channel"))
            mlmodel = linear_quantize_weights(mlmodel, config=config)

    ops = _op_counts(mlmodel)
    fp32_ops = fp32_op_counts(mlmodel)
    if detector:
        from tinyvim_deploy.export.nms import coreml_nms_pipeline

        mlmodel = coreml_nms_pipeline(mlmodel, nms_config, list(spec.class_names), hw)
    mlmodel.author = "tinyvim-deploy"
    mlmodel.license = "See the model's checkpoint licence."
    mlmodel.version = tinyvim_deploy.__version__
    weights_int8 = weights_int8 or w8a8
    scan_note = ", scan fp32" if precision == "fp16" and scan_fp32 else ""
    kind = task.coreml_kind(spec)
    mlmodel.short_description = (f"{model_name} {kind}, {hw[0]}x{hw[1]}, {precision}{scan_note}"
                                 + (", int8 weights and activations" if w8a8 else ", int8 weights" if weights_int8
                                    else ""))
    meta = build_metadata(spec, input_hw=hw, batch=1, opset=0, scan_impl="pytorch", custom_ops="none",
                          weights_sha256=model.checkpoint.sha256 if model.checkpoint else "none (random init)",
                          torch_version=torch.__version__, toolkit_version=tinyvim_deploy.__version__)
    meta.pop("opset")  # no ONNX here
    meta.update({"precision": precision, "weights": "int8" if weights_int8 else precision,
                 "activations": "int8" if w8a8 else precision,
                 "scan_precision": "fp32" if precision == "fp32" or scan_fp32 else "fp16",
                 "input_normalisation": "ImageType scale 1/255, bias -mean; 1/std folded into the stem conv"})
    mlmodel.user_defined_metadata.update({f"tinyvim_deploy.{k}": str(v) for k, v in meta.items()})

    default = (f"{model_name}_{hw[0]}x{hw[1]}_{precision}" + ("_w8a8" if w8a8 else "_w8" if weights_int8 else "")
               + ".mlpackage")
    path = Path(output) if output else Path(default)
    if path.suffix != ".mlpackage":
        raise ExportError(f"A Core ML ML Program is a .mlpackage folder: {path} has another suffix.")
    _save_package_atomically(mlmodel, path)
    return CoreMLExportResult(path, precision, weights_int8, _folder_mb(path), ops,
                              {k: v for k, v in ops.items() if k in NOT_ON_NEURAL_ENGINE}, fold_diff,
                              time.perf_counter() - t0, fp32_ops, w8a8)


def _quantize_activations(mlmodel, calib_data, spec, hw, samples: int):
    """W8A8 (macOS): calibrate activation ranges on the calibration images, as the ImageType input sees them."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_activations
    from PIL import Image

    from tinyvim_deploy.calibration.data import load_calibration_set
    from tinyvim_deploy.preprocess import to_pixels

    calib = load_calibration_set(calib_data, spec, hw, samples=samples, seed=0)
    pixels = to_pixels(np.asarray(calib.tensors), spec.mean, spec.std)
    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric"))
    return linear_quantize_activations(mlmodel, config, [{"image": Image.fromarray(p)} for p in pixels])


def fp32_op_counts(mlmodel) -> dict[str, int]:
    """Compute ops (not const/cast, not the ImageType's own scale/bias) with FP32 outputs, by op type."""
    import collections

    from coremltools.converters.mil.mil import types

    program = mlmodel._mil_program  # the converted program (a package loaded from disk has none)
    counts: collections.Counter[str] = collections.Counter()
    for op in program.functions["main"].operations if program is not None else ():
        if (op.op_type not in ("const", "cast") and op.outputs and op.outputs[0].dtype == types.fp32
                and not op.name.startswith("image__")):
            counts[op.op_type] += 1
    return dict(counts)


def _op_counts(mlmodel) -> dict[str, int]:
    import collections

    counts = collections.Counter(op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations
                                 if op.op_type != "const")
    return dict(counts.most_common())


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _save_package_atomically(mlmodel, path: Path) -> None:
    """A package is a folder: save to a temporary sibling, then swap it in (the old one removed last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    staged = tmp / path.name
    try:
        mlmodel.save(str(staged))
        honour_umask(staged)  # coremltools stages some files 0600 and folders 0700
        if path.exists():  # moved into the temporary folder, deleted with it below
            os.replace(path, tmp / "previous")
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
