"""PyTorch -> ONNX with ``tinyvim`` custom ops, then validation, then an atomic rename.

Pipeline (each step one function): build the model and its deploy form -> ``torch.onnx.export``
(dynamo) with the custom ops emitted as bare ``tinyvim::`` nodes -> attach their model-local
functions -> simplify (onnxsim, else onnxslim) -> optionally inline -> metadata -> write to a
temporary file -> validate against PyTorch -> rename into place. Nothing is left at the requested
path unless validation passed; an interrupted export leaves no partial file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from tinyvim_deploy.errors import ExportError, ValidationError
from tinyvim_deploy.export import ops as tv_ops
from tinyvim_deploy.export.metadata import build_metadata, write_metadata
from tinyvim_deploy.export.validate import ValidationReport, validate_detector, validate_onnx, validation_inputs
from tinyvim_deploy.fileio import atomic_output
from tinyvim_deploy.models.registry import parse_input_size

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 23, 20
INPUT_NAME = "image"
NMS_KINDS = ("onnx", "efficient-nms", "none")  # detectors: what follows the network in the graph


@dataclasses.dataclass
class ExportResult:
    path: Path
    report: ValidationReport | None
    metadata: dict[str, str]
    export_seconds: float
    node_count: int
    custom_nodes: dict[str, int]


def default_output_name(model_name: str, size: tuple[int, int], batch: int | None, inline: bool) -> str:
    stem = f"{model_name}_{size[0]}x{size[1]}" + ("_dynbatch" if batch is None else (f"_b{batch}" if batch != 1 else ""))
    return stem + ("_inlined" if inline else "") + ".onnx"


def _torch_export(model: torch.nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool,
                  output_names: Sequence[str] = ("logits",)) -> onnx.ModelProto:
    from tinyvim_deploy.models.ops import custom_ops

    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with custom_ops(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(output_names), dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
            custom_translation_table=tv_ops.translation_table(),
        )
    return program.model_proto


def _attach_functions(model: onnx.ModelProto, opset: int, scan_impl: str, length: int) -> None:
    del model.functions[:]
    if not custom_node_counts(model):  # models without TinyViM (EfficientFormerV2 segmentors) need none
        return
    model.functions.extend(tv_ops.functions_for(opset, scan_impl, length))
    if not any(o.domain == tv_ops.DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(tv_ops.DOMAIN, tv_ops.DOMAIN_VERSION))


def custom_node_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == tv_ops.DOMAIN:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim if installed, else onnxslim; keeps the custom nodes and functions or is not used."""
    before = custom_node_counts(model)
    try:
        import onnxsim

        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model, check_n=0)
        tool = "onnxsim"
    except ImportError:
        import onnxslim

        simplified, ok, tool = onnxslim.slim(model), True, "onnxslim"
    except Exception:  # a simplifier crash must not fail a correct export
        return model, "none (simplifier failed)"
    if not ok or custom_node_counts(simplified) != before or len(simplified.functions) != len(model.functions):
        return model, f"none ({tool} dropped custom ops)"
    return simplified, tool


def inline_custom_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """A flat standard-op graph for runtimes without local-function support (e.g. OpenVINO)."""
    import onnx.inliner

    flat = onnx.inliner.inline_local_functions(model)
    keep = [o for o in flat.opset_import if o.domain != tv_ops.DOMAIN]
    del flat.opset_import[:]
    flat.opset_import.extend(keep)
    return flat


def export_onnx(
    model_name: str,
    *,
    weights: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    input_size=None,
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    simplify_graph: bool = True,
    inline: bool = False,
    scan_impl: str = tv_ops.DEFAULT_SCAN_IMPL,
    atol: float = 1e-4,
    validate: bool = True,
    photos_dir: str | os.PathLike | None = None,
    include_postprocess: bool = False,
    nms: str = "onnx",
    nms_config=None,
    console=None,
) -> ExportResult:
    """Export, simplify, attach metadata, validate against PyTorch, write (atomically) only if it passes.

    ``include_postprocess`` (segmentors): the graph also resizes the logits to its input size and
    takes the argmax, so it outputs an int32 label map; validated by pixel agreement.
    ``nms`` (detectors, drkd.md §7.3): ``onnx`` appends the standard-op NMS subgraph (outputs ``num_dets,
    boxes, scores, classes``), ``efficient-nms`` one ``EfficientNMS_TRT`` plugin node (for TensorRT: checked
    structurally, its network part validated in ORT), ``none`` keeps the raw ``boxes, scores``.
    """
    import time

    import tinyvim_deploy
    from tinyvim_deploy.models import check_input_size, create_model, get_spec, reparameterize
    from tinyvim_deploy.tasks import get_task

    spec = get_spec(model_name)
    task = get_task(spec.task)
    detector = task.has_nms
    if nms not in NMS_KINDS:
        raise ExportError(f"Unknown NMS {nms!r}: choose {', '.join(NMS_KINDS)}.")
    if detector:
        from tinyvim_deploy.export.nms import NMSConfig

        nms_config = nms_config or NMSConfig()
    if include_postprocess and not task.can_output_labels:
        raise ExportError("--include-postprocess is for segmentors (a label map out of the graph).")
    size = parse_input_size(input_size, spec.input_size[1:])
    check_input_size(*size, spec.size_multiple)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"Opset {opset} is not supported: choose {MIN_OPSET} to {MAX_OPSET}.")
    if scan_impl not in tv_ops.SCAN_IMPLS:
        raise ExportError(f"Unknown scan implementation {scan_impl!r}: choose {', '.join(tv_ops.SCAN_IMPLS)}.")
    if batch < 1:
        raise ExportError(f"Batch size must be at least 1, got {batch}.")
    path = Path(output) if output else Path(default_output_name(spec.name, size, None if dynamic_batch else batch,
                                                                inline))
    if path.is_dir():
        raise ExportError(f"Output path {path} is a directory; give a file name ending in .onnx.")

    t0 = time.perf_counter()
    model = create_model(spec.name, weights=weights)
    deploy = reparameterize(model)
    if not dynamic_batch and hasattr(deploy, "prepare_for_size"):  # size-dependent constants (segmentors)
        deploy.prepare_for_size(*size)
    reference = model  # what the file is validated against (unfused, as the official code runs)
    if include_postprocess:
        from tinyvim_deploy.models.segmentors import WithLabelOutput

        deploy, reference = WithLabelOutput(deploy), WithLabelOutput(model)
    example = torch.randn(2 if dynamic_batch and batch == 1 else batch, 3, *size, generator=torch.Generator().manual_seed(0))
    try:
        proto = _torch_export(deploy, example, opset, dynamic_batch, ("boxes", "scores") if detector else ("logits",))
    except Exception as e:  # the exporter's own errors are long; keep the first line
        raise ExportError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0][:300]}") from e
    length = (size[0] // 32) * (size[1] // 32)
    _attach_functions(proto, opset, scan_impl, length)
    tool = "not run"
    if simplify_graph:
        proto, tool = simplify(proto)
    if inline:
        proto = inline_custom_ops(proto)
    checkpoint = model.checkpoint
    metadata = build_metadata(
        model.spec, input_hw=size, batch=None if dynamic_batch else batch, opset=opset, scan_impl=scan_impl,
        custom_ops="inlined" if inline else "functions", torch_version=torch.__version__,
        weights_sha256=checkpoint.sha256 if checkpoint else "none (random init)",
        toolkit_version=tinyvim_deploy.__version__,
    )
    metadata["simplifier"] = tool
    if include_postprocess:
        metadata["postprocess"] = "resize+argmax"  # the output is an int32 label map at the input size
    raw_bytes = None
    if detector:
        raw_bytes = proto.SerializeToString()  # the network part, validated on its own
        proto = _append_nms(proto, nms, nms_config)
        metadata["nms"] = json.dumps({"kind": nms, **dataclasses.asdict(nms_config)})
    write_metadata(proto, metadata)
    proto.producer_name, proto.producer_version = "tinyvim-deploy", tinyvim_deploy.__version__
    onnx.checker.check_model(proto, full_check=True)

    report = None
    with atomic_output(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        export_seconds = time.perf_counter() - t0
        if validate:
            batches = [1, 3] if dynamic_batch else [batch]
            inputs = validation_inputs(size, batches, model.spec, photos_dir)
            if detector:
                report = validate_detector(raw_bytes, tmp, reference, inputs, nms_config, atol=atol,
                                           run_nms=nms == "onnx")
            else:
                report = validate_onnx(tmp, reference, inputs, atol=atol, task=spec.task)
            if not report.passed:
                raise ValidationError(
                    f"Exported model differs from PyTorch: max abs diff {report.max_abs:.2e} > atol {atol:g}; "
                    f"nothing was written to {path}."
                )
    return ExportResult(path, report, metadata, export_seconds, len(proto.graph.node), custom_node_counts(proto))


def _append_nms(proto: onnx.ModelProto, kind: str, config) -> onnx.ModelProto:
    from tinyvim_deploy.export import nms

    if kind == "onnx":
        return nms.append_onnx_nms(proto, config)
    if kind == "efficient-nms":
        proto = nms.append_efficient_nms_trt(proto, config)
        problems = nms.structural_check_efficient_nms(proto)
        if problems:
            raise ExportError(f"The EfficientNMS_TRT graph is malformed: {problems[0]}")
        return proto
    return proto


def onnx_input_hw(model: onnx.ModelProto) -> tuple[int, int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[2].dim_value, dims[3].dim_value

