"""ONNX graph plumbing shared by the ONNX and EfficientNMS_TRT backends.

:func:`prepare_outputs` detaches a detector's ``boxes`` / ``scores`` outputs so that NMS can be appended:
it renames the network's own tensors that carry a contract name (to ``raw_boxes`` / ``raw_scores``, or a
free variant) and checks the static N and C the backends need; :func:`contract_outputs` declares the
contract's four graph outputs.
"""

from __future__ import annotations

import copy
import dataclasses

import onnx
from onnx import TensorProto, helper

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.nms.contract import OUTPUT_NAMES

__all__ = ["MIN_OPSET", "RawOutputs", "contract_outputs", "default_opset", "free_name", "prepare_outputs"]

MIN_OPSET = 13  # GatherND batch_dims (12), ReduceSum/Unsqueeze/Slice with axes as inputs (13)


@dataclasses.dataclass
class RawOutputs:
    """The network's raw outputs, after renaming: tensor names, static N and C, the batch dimension."""

    boxes: str
    scores: str
    n: int
    c: int
    batch: onnx.TensorShapeProto.Dimension
    elem_type: int


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {o.name for o in graph.output}
    names |= {v.name for v in graph.value_info}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= _all_names(sub)
    names.discard("")
    return names


def free_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... whichever is not in ``taken`` first; reserved in ``taken``."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor in every node (inner graphs read outer tensors by name too) and value_info."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _rename_uses(sub, old, new)
    for vi in graph.value_info:
        if vi.name == old:
            vi.name = new


def _output_info(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    info = next((o for o in model.graph.output if o.name == name), None)
    if info is None:
        outputs = [o.name for o in model.graph.output]
        raise ExportError(f"The model has no output {name!r} to attach NMS to (outputs: {outputs}).")
    if info.type.tensor_type.HasField("shape") and info.type.tensor_type.elem_type:
        return info
    inferred = onnx.shape_inference.infer_shapes(model)  # outputs written without types (hand-made graphs)
    return next(o for o in inferred.graph.output if o.name == name)


def prepare_outputs(model: onnx.ModelProto, boxes_name: str,
                    scores_name: str) -> tuple[onnx.ModelProto, RawOutputs, set[str]]:
    """A copy whose outputs are removed and whose tensors named like the contract's outputs are renamed."""
    if default_opset(model) < MIN_OPSET:
        raise ExportError(f"NMS needs ONNX opset >= {MIN_OPSET}; the model has {default_opset(model)} "
                          "(convert it with onnx.version_converter first).")
    box_info, score_info = _output_info(model, boxes_name), _output_info(model, scores_name)
    box_dims = list(box_info.type.tensor_type.shape.dim)
    score_dims = list(score_info.type.tensor_type.shape.dim)
    if len(box_dims) != 3 or len(score_dims) != 3:
        raise ExportError(f"NMS expects boxes [B,N,4] and scores [B,N,C]; got ranks {len(box_dims)}, {len(score_dims)}.")
    n, four, c = box_dims[1].dim_value, box_dims[2].dim_value, score_dims[2].dim_value
    if not (n and c and four == 4 and score_dims[1].dim_value == n):
        def show(dims):
            return [d.dim_value or d.dim_param or "?" for d in dims]
        raise ExportError(f"NMS needs static boxes [B,N,4] and scores [B,N,C] with equal N; got {show(box_dims)} "
                          f"and {show(score_dims)} (export with a fixed input size).")
    if box_info.type.tensor_type.elem_type != score_info.type.tensor_type.elem_type:
        raise ExportError("boxes and scores have different element types.")

    out = copy.deepcopy(model)
    graph = out.graph
    taken = _all_names(graph)
    graph_inputs = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    renamed = {}
    # Free the contract's names: the raw boxes/scores (and anything else already called like an output).
    for name in OUTPUT_NAMES:
        if name not in taken:
            continue
        if name in graph_inputs:
            raise ExportError(f"The model has an input or initializer named {name!r}, an NMS output name.")
        new = free_name(f"raw_{name}", taken)
        _rename_uses(graph, name, new)
        renamed[name] = new
    raw_boxes, raw_scores = renamed.get(boxes_name, boxes_name), renamed.get(scores_name, scores_name)
    for info, new in ((box_info, raw_boxes), (score_info, raw_scores)):
        if not any(v.name == new for v in graph.value_info):  # keeps the type for cut_before_nms's Extractor
            kept = copy.deepcopy(info)
            kept.name = new
            graph.value_info.append(kept)
    del graph.output[:]
    batch = copy.deepcopy(box_dims[0])
    if not batch.dim_value and not batch.dim_param:
        batch.dim_param = "batch"
    elem = box_info.type.tensor_type.elem_type
    return out, RawOutputs(raw_boxes, raw_scores, n, c, batch, elem), taken


def contract_outputs(raw: RawOutputs, k: int, float_type: int = TensorProto.FLOAT) -> list[onnx.ValueInfoProto]:
    def info(name, elem, *dims):
        vi = helper.make_tensor_value_info(name, elem, [None] * (1 + len(dims)))
        shape = vi.type.tensor_type.shape
        shape.dim[0].CopyFrom(raw.batch)
        for d, size in zip(shape.dim[1:], dims):
            d.dim_value = size
        return vi

    return [info("num_dets", TensorProto.INT32, 1), info("boxes", float_type, k, 4),
            info("scores", float_type, k), info("classes", TensorProto.INT32, k)]
