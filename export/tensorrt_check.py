"""Static check of an ONNX graph against TensorRT's ONNX operator support (no TensorRT needed).

``tvdeploy check model.onnx --target trt`` reads the graph as TensorRT's parser would see it (the
``tinyvim`` functions inlined, as ``--target trt`` does, unless ``keep_custom_ops``), walks every
node including Scan/Loop/If bodies, and checks each op against the support table of the targeted
TensorRT release (``tensorrt_ops.json``) plus the attributes the parser restricts: constant CumSum
axis and Reduce/Squeeze axes, Einsum forms, Resize modes, zero Q/DQ zero points, a static Scan length.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.ops import DOMAIN

RESIZE_COORDINATE_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
AXES_INPUT_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                  "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "Squeeze", "Unsqueeze"}
OK, WARN, FAIL = "ok", "warning", "unsupported"


@dataclasses.dataclass
class OpRow:
    op: str
    count: int
    status: str
    notes: list[str]


@dataclasses.dataclass
class CheckReport:
    table: str  # which TensorRT support table was used
    opset: int
    rows: list[OpRow]
    graph_notes: list[str]

    @property
    def supported(self) -> bool:
        return all(r.status != FAIL for r in self.rows) and not any(n.startswith("✗") for n in self.graph_notes)


# Plugins of TensorRT's own libnvinfer_plugin that our exports use: the parser maps a node of this op type
# (any domain) to the registered creator of that name.
BUILTIN_PLUGINS = {"EfficientNMS_TRT": "detectors exported with --nms efficient-nms"}


def load_support() -> dict[str, Any]:
    text = resources.files("tinyvim_deploy.export").joinpath("tensorrt_ops.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def table_for(version: str, support: dict[str, Any]) -> str:
    """The newest table not newer than ``version`` (11.x uses the newest table we have)."""

    def key(v: str) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in v.split(".")[:2])
        except ValueError:
            raise ExportError(f"--trt-version takes a version like 10.15, got {v!r}.") from None

    tables: list[str] = sorted(support["tables"], key=key)
    fitting = [t for t in tables if key(t) <= key(version)]
    if not fitting:
        raise ExportError(f"No operator table for TensorRT {version}: the oldest we have is {tables[0]}.")
    return fitting[-1]


def _walk(graph: onnx.GraphProto, depth: int = 0) -> Iterator[tuple[onnx.NodeProto, onnx.GraphProto, int]]:
    for node in graph.node:
        yield node, graph, depth
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, depth + 1)


class _Constants:
    """Which tensor names are build-time constants (initializers or Constant outputs), with values."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.values: dict[str, np.ndarray] = {}
        for graph in [model.graph] + [g for n, _, _ in _walk(model.graph) for g in _subgraphs(n)]:
            for init in graph.initializer:
                self.values[init.name] = numpy_helper.to_array(init)
            for node in graph.node:
                if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                    self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def known(self, name: str) -> bool:
        return name in self.values


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def _einsum_problem(equation: str) -> str | None:
    lhs = equation.replace(" ", "").split("->")[0]
    if "..." in lhs:
        return f"Einsum {equation!r} uses an ellipsis"
    for operand in lhs.split(","):
        if len(set(operand)) != len(operand):
            return f"Einsum {equation!r} takes a diagonal ({operand})"
    return None


def _node_problems(node: onnx.NodeProto, constants: _Constants, shapes: dict[str, list[int | None]]) -> list[str]:
    """Restrictions of TensorRT's parser that this node breaks ('✗ …'), or notes worth knowing ('…')."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    problems: list[str] = []
    if op == "CumSum" and not constants.known(node.input[1]):
        problems.append("✗ CumSum axis is not a build-time constant")
    if op in AXES_INPUT_OPS and len(node.input) > 1 and node.input[1] and not constants.known(node.input[1]):
        problems.append(f"✗ {op} axes come from a computed tensor, not a constant")
    if op == "Einsum":
        problem = _einsum_problem(attrs["equation"].decode())
        if problem:
            problems.append(f"✗ {problem}")
    if op == "Resize":
        mode = attrs.get("mode", b"nearest").decode()
        coord = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode not in ("nearest", "linear"):
            problems.append(f"✗ Resize mode {mode!r} (TensorRT: nearest, linear)")
        if coord not in RESIZE_COORDINATE_MODES:
            problems.append(f"✗ Resize coordinate mode {coord!r}")
        if mode == "nearest" and attrs.get("nearest_mode", b"round_prefer_floor").decode() not in RESIZE_NEAREST_MODES:
            problems.append("✗ Resize nearest_mode")
        if attrs.get("antialias", 0):
            problems.append("✗ Resize with antialias")
        if attrs.get("keep_aspect_ratio_policy", b"stretch").decode() != "stretch":
            problems.append("✗ Resize keep_aspect_ratio_policy other than stretch")
    if op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero = constants.values.get(node.input[2])
        if zero is None or np.any(zero != 0):
            problems.append(f"✗ {op} zero point is not 0 (TensorRT quantizes symmetrically: use the tensorrt "
                            "INT8 profile)")
    if op == "Scan":
        n_state = len(node.input) - attrs.get("num_scan_inputs", 0)
        first_scan_input = node.input[n_state] if len(node.input) > n_state else None
        dims = shapes.get(first_scan_input or "", [])
        axis = (attrs.get("scan_input_axes") or [0])[0]
        if not dims or axis >= len(dims) or dims[axis] is None:
            problems.append("⚠ could not prove the Scan length static here; TensorRT needs it at build time "
                            "(it is static for a static input size)")
        else:
            problems.append(f"Scan length {dims[axis]} (static)")
    if op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        problems.append("✗ LayerNormalization with Mean/InvStdDev outputs")
    if op == "TopK" and attrs.get("sorted", 1) != 1:
        problems.append("✗ TopK with sorted=0")
    return problems


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # values of Shape chains
    except Exception:
        return {}
    shapes: dict[str, list[int | None]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def check_onnx(model: onnx.ModelProto, tensorrt_version: str = "10.15", *, keep_custom_ops: bool = False) -> CheckReport:
    """Every op of ``model`` as TensorRT ``tensorrt_version``'s ONNX parser would meet it."""
    from tinyvim_deploy.export.tensorrt_export import prepare_onnx

    support = load_support()
    table_name = table_for(tensorrt_version, support)
    table = support["tables"][table_name]
    if keep_custom_ops:
        graph_model = model
    else:  # what --target trt hands to TensorRT (functions inlined; precision does not change the ops checked)
        graph_model = prepare_onnx(model, "int8" if any(n.op_type == "QuantizeLinear" for n in model.graph.node)
                                   else "fp32")
    opset = next((o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph_notes = []
    if not table["opset_min"] <= opset <= table["opset_max"]:
        graph_notes.append(f"✗ opset {opset} is outside TensorRT {table_name}'s {table['opset_min']}–{table['opset_max']}")
    supported = set(support["supported"]) - set(table["unsupported"])
    never = set(support["never_supported"]) | set(table["unsupported"])
    constants = _Constants(graph_model)
    shapes = _static_shapes(graph_model)

    counts: collections.Counter[str] = collections.Counter()
    notes: dict[str, list[str]] = collections.defaultdict(list)
    nested: collections.Counter[str] = collections.Counter()
    for node, _graph, depth in _walk(graph_model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] += 1
        nested[key] += depth > 0
        for problem in _node_problems(node, constants, shapes):
            if problem not in notes[key]:
                notes[key].append(problem)

    rows = []
    for key, count in sorted(counts.items()):
        op_notes = list(notes[key])
        op_type = key.split("::")[-1]
        if op_type in BUILTIN_PLUGINS:  # loaded by trt.init_libnvinfer_plugins, which our build calls
            status = OK
            op_notes.insert(0, f"TensorRT's own plugin ({BUILTIN_PLUGINS[op_type]}), in libnvinfer_plugin")
        elif "::" in key:
            domain = key.split("::")[0]
            hint = "--plugin-lib with a plugin creator of this name" if domain == DOMAIN else "a TensorRT plugin"
            status, op_notes = FAIL, [f"custom op: needs {hint}", *op_notes]
        elif key in never or key not in supported:
            status = FAIL
            op_notes.insert(0, f"not supported by TensorRT {table_name}'s ONNX parser")
        else:
            status = FAIL if any(n.startswith("✗") for n in op_notes) else WARN if any(
                n.startswith("⚠") for n in op_notes) else OK
            restriction = support["restrictions"].get(key)
            if status == OK and restriction and not any(n.startswith(("✗", "⚠")) for n in op_notes):
                op_notes.append(f"restriction met: {restriction}")
        if nested[key]:
            op_notes.append(f"{nested[key]} inside Scan/Loop/If bodies")
        rows.append(OpRow(key, count, status, op_notes))
    return CheckReport(f"TensorRT {table_name}", opset, rows, graph_notes)
