"""TensorRT's NMS: one ``EfficientNMS_TRT`` plugin node (libnvinfer_plugin) whose four outputs are the contract.

The plugin cannot run without TensorRT, so :func:`structural_check_efficient_nms` checks the node and
the graph around it, and :func:`cut_before_nms` gives the part ONNX Runtime can run.
"""

from __future__ import annotations

import copy

import onnx
from onnx import TensorProto, helper

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.nms.contract import OUTPUT_NAMES, NMSConfig
from tinyvim_deploy.export.nms.graph import contract_outputs, free_name, prepare_outputs

__all__ = [
    "PLUGIN_DOMAIN",
    "PLUGIN_MAX_CANDIDATES",
    "PLUGIN_OP",
    "append_efficient_nms_trt",
    "cut_before_nms",
    "has_efficient_nms",
    "structural_check_efficient_nms",
]

PLUGIN_OP = "EfficientNMS_TRT"
# TensorRT's ONNX parser dispatches on op_type alone: an op it has no importer for goes to its
# FallbackPluginImporter, which looks the plugin up by (op_type, plugin_version, plugin_namespace) and
# never reads the node's domain (onnx-tensorrt ModelImporter.cpp). A custom domain keeps the model valid
# for onnx.checker and shape inference (domain "" fails: "No Op registered for EfficientNMS_TRT"), and
# is what mmyolo's easydeploy and YOLOv7's end2end export emit (``g.op("TRT::EfficientNMS_TRT")``).
PLUGIN_DOMAIN = "TRT"
PLUGIN_MAX_CANDIDATES = 4096  # EfficientNMS_TRT runs NMS on its 4096 best (box, class) pairs only

# The attributes the contract needs: no background class, scores already activated,
# class-aware, corner boxes. max_output_boxes / score_threshold / iou_threshold come from the config.
_PLUGIN_FIXED = {"plugin_version": "1", "background_class": -1, "score_activation": 0, "class_agnostic": 0,
                 "box_coding": 0}
_PLUGIN_ATTRS = {**{k: type(v) for k, v in _PLUGIN_FIXED.items()}, "max_output_boxes": int, "score_threshold": float,
                 "iou_threshold": float}


def append_efficient_nms_trt(model: onnx.ModelProto, config: NMSConfig | None = None, boxes_name: str = "boxes",
                             scores_name: str = "scores", *, domain: str = PLUGIN_DOMAIN) -> onnx.ModelProto:
    """Append one ``EfficientNMS_TRT`` node (TensorRT's libnvinfer_plugin); outputs exactly the contract.

    ``pre_nms_topk`` is not applied: the plugin keeps its 4096 best (box, class) pairs instead. Its score
    filter and IoU test are ``>=`` where the reference uses ``>``, and its padding class is 0 (module
    docstring). ``domain=""`` gives the bare node TensorRT's own samples write (onnx-graphsurgeon's
    default); the parser accepts both, but only a named domain passes ``onnx.checker``.
    """
    config = config or NMSConfig()
    out, raw, taken = prepare_outputs(model, boxes_name, scores_name)
    if raw.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise ExportError("EfficientNMS_TRT takes float32 or float16 boxes and scores.")
    attrs = {**_PLUGIN_FIXED, "max_output_boxes": config.max_det, "score_threshold": float(config.score_threshold),
             "iou_threshold": float(config.iou_threshold)}
    node = helper.make_node(PLUGIN_OP, [raw.boxes, raw.scores], list(OUTPUT_NAMES), name=free_name("nms/efficient_nms",
                            taken), domain=domain, **attrs)
    out.graph.node.append(node)
    out.graph.output.extend(contract_outputs(raw, config.max_det, raw.elem_type))
    if domain and not any(o.domain == domain for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(domain, 1))
    return out


def _plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP]


def has_efficient_nms(model: onnx.ModelProto) -> bool:
    return bool(_plugin_nodes(model))


def _dims(info: onnx.ValueInfoProto | None) -> list[int | str | None] | None:
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in info.type.tensor_type.shape.dim]


def structural_check_efficient_nms(model: onnx.ModelProto) -> list[str]:
    """Problems that would stop the EfficientNMS_TRT graph from meeting the contract; [] when none.

    Checks what can be checked without TensorRT: one plugin node with exactly the contract's attributes
    and types, inputs [B,N,4] / [B,N,C] with the same B and N, the graph's outputs being the node's four
    outputs named and typed as the contract, and the rest of the graph passing ``onnx.checker``.
    """
    problems: list[str] = []
    nodes = _plugin_nodes(model)
    if len(nodes) != 1:
        return [f"expected one {PLUGIN_OP} node, found {len(nodes)}"]
    node = nodes[0]
    if node.domain and not any(o.domain == node.domain for o in model.opset_import):
        problems.append(f"the node's domain {node.domain!r} is not in the model's opset_import")

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for name in sorted(set(attrs) - set(_PLUGIN_ATTRS)):
        problems.append(f"unexpected attribute {name!r}")
    for name, kind in _PLUGIN_ATTRS.items():
        if name not in attrs:
            problems.append(f"missing attribute {name!r}")
            continue
        value = attrs[name]
        if kind is str:
            value = value.decode() if isinstance(value, bytes) else value
        if not isinstance(value, kind):
            problems.append(f"attribute {name!r} should be {kind.__name__}, is {type(value).__name__}")
        elif name in _PLUGIN_FIXED and value != _PLUGIN_FIXED[name]:
            problems.append(f"attribute {name!r} is {value!r}, the contract needs {_PLUGIN_FIXED[name]!r}")
        elif name in ("score_threshold", "iou_threshold") and not 0.0 <= value <= 1.0:
            problems.append(f"attribute {name!r} = {value} is outside [0, 1]")
        elif name == "max_output_boxes" and not 1 <= value <= PLUGIN_MAX_CANDIDATES:
            problems.append(f"max_output_boxes = {value} is outside 1..{PLUGIN_MAX_CANDIDATES}")
    k = attrs.get("max_output_boxes")

    if len(node.input) != 2:
        problems.append(f"expected 2 inputs (boxes, scores; no anchors), found {len(node.input)}")
    if list(node.output) != list(OUTPUT_NAMES):
        problems.append(f"node outputs are {list(node.output)}, expected {list(OUTPUT_NAMES)}")
    if [o.name for o in model.graph.output] != list(OUTPUT_NAMES):
        problems.append(f"graph outputs are {[o.name for o in model.graph.output]}, expected {list(OUTPUT_NAMES)}")

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    batch = None
    if len(node.input) == 2:
        box_dims, score_dims = _dims(infos.get(node.input[0])), _dims(infos.get(node.input[1]))
        if box_dims is None or score_dims is None:
            problems.append("the plugin's input shapes are unknown")
        elif len(box_dims) != 3 or box_dims[2] != 4 or len(score_dims) != 3:
            problems.append(f"inputs should be boxes [B,N,4] and scores [B,N,C], are {box_dims} and {score_dims}")
        else:
            if box_dims[:2] != score_dims[:2]:
                problems.append(f"boxes {box_dims} and scores {score_dims} disagree on B or N")
            batch = box_dims[0]
        for name in node.input:
            elem = infos[name].type.tensor_type.elem_type if name in infos else 0
            if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
                problems.append(f"input {name!r} is {TensorProto.DataType.Name(elem)}, must be FLOAT or FLOAT16")
    expected_types = {"num_dets": (TensorProto.INT32,), "boxes": (TensorProto.FLOAT, TensorProto.FLOAT16),
                      "scores": (TensorProto.FLOAT, TensorProto.FLOAT16), "classes": (TensorProto.INT32,)}
    expected_dims = {"num_dets": [batch, 1], "boxes": [batch, k, 4], "scores": [batch, k], "classes": [batch, k]}
    for out in model.graph.output:
        if out.name not in expected_types:
            continue
        if out.type.tensor_type.elem_type not in expected_types[out.name]:
            problems.append(f"output {out.name!r} has type {TensorProto.DataType.Name(out.type.tensor_type.elem_type)}")
        if _dims(out) != expected_dims[out.name]:
            problems.append(f"output {out.name!r} has shape {_dims(out)}, expected {expected_dims[out.name]}")

    if len(node.input) == 2 and not problems:
        try:
            onnx.checker.check_model(cut_before_nms(model), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ExportError) as e:
            problems.append(f"the graph before the plugin is invalid: {str(e).splitlines()[0]}")
    return problems


def cut_before_nms(model: onnx.ModelProto) -> onnx.ModelProto:
    """The part of an EfficientNMS_TRT model that ORT can run: graph inputs -> the plugin's inputs.

    The outputs keep the graph's internal names (``raw_boxes``, ``raw_scores`` after
    :func:`append_efficient_nms_trt`).
    """
    import onnx.utils

    nodes = _plugin_nodes(model)
    if len(nodes) != 1:
        raise ExportError(f"expected one {PLUGIN_OP} node to cut at, found {len(nodes)}")
    outputs = [name for name in nodes[0].input if name]
    model = copy.deepcopy(model)
    known = {v.name for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in inferred.graph.value_info:
        if vi.name in outputs and vi.name not in known:
            model.graph.value_info.append(vi)
            known.add(vi.name)
    for name in outputs:
        if name not in known:  # the Extractor needs an entry for each output
            model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    cut = onnx.utils.Extractor(model).extract_model(inputs, outputs)
    # the plugin's domain import is no longer needed; drop it so the cut model is plain ONNX
    keep = [o for o in cut.opset_import if o.domain in ("", "ai.onnx") or any(n.domain == o.domain for n in cut.graph.node)]
    del cut.opset_import[:]
    cut.opset_import.extend(keep)
    return cut
