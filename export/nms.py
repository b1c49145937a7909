"""NMS attached to an exported detector, one output contract for every backend.

Written from ``shared/specs/drkd.md`` §7.3 and ``shared/specs/detection_anchors.md``. A detector is
exported without NMS, ending at ``boxes [B,N,4]`` (x1y1x2y2, input pixels) and ``scores [B,N,C]``
(already activated); this module appends the post-processing per backend:

- **ONNX Runtime** (:func:`append_onnx_nms`): a standard-op subgraph, pre-NMS ``TopK`` -> ONNX
  ``NonMaxSuppression`` -> "scatter then TopK" -> the fixed-K contract. It reproduces
  :func:`tinyvim_deploy.models.detection.multiclass_nms` exactly (tested: counts, boxes, scores,
  classes and padding), including its tie-breaks;
- **TensorRT** (:func:`append_efficient_nms_trt`): one ``EfficientNMS_TRT`` plugin node whose four
  outputs are the contract. It cannot run without TensorRT, so :func:`structural_check_efficient_nms`
  checks the node and :func:`cut_before_nms` gives the part ONNX Runtime can run;
- **Core ML** (:func:`coreml_nms_pipeline`): a Pipeline of the detection ML program and Core ML's
  ``NonMaximumSuppression`` model, the layout Vision's object-detection requests expect;
  :func:`coreml_detection_wrapper` gives the ML program its ``confidence`` / ``coordinates`` outputs.

The contract: ``num_dets [B,1] int32, boxes [B,K,4] float32, scores [B,K] float32, classes [B,K]
int32`` with K = ``max_det``; only the first ``num_dets[b]`` rows of image b are detections.

Output names: the appended graphs' outputs are literally ``num_dets, boxes, scores, classes`` (what the
Predictor reads), so the network's own ``boxes`` / ``scores`` tensors are renamed inside the graph
(to ``raw_boxes`` / ``raw_scores``, or a free variant of these names) before NMS is attached.

Where the backends differ (same config, measured for ORT, read from the sources for the others):

======================  ========================  ==========================  ===========================
                        reference / ONNX (ORT)    EfficientNMS_TRT            Core ML NMS
======================  ========================  ==========================  ===========================
candidates              every (box, class) pair   every (box, class) pair     one per box, label = argmax
score filter            score > threshold         score >= threshold          "below" discarded (>=)
IoU suppression         IoU > threshold           IoU >= threshold            not stated
pre-NMS top-k           boxes by max class score  top 4096 (box, class)       none
ties                    score, then index         radix sort, unspecified     unspecified
padding rows            boxes 0, score 0, cls -1  boxes 0, score 0, cls 0     none (variable row count)
max_det                 yes                       yes (max_output_boxes)      no (all survivors)
======================  ========================  ==========================  ===========================

(EfficientNMS_TRT from NVIDIA/TensorRT ``plugin/efficientNMSPlugin/efficientNMSInference.cu``: the
filter uses ``gte``, the suppression ``IOU(...) >= iouThreshold``, outputs are memset to 0. Core ML from
coremltools' ``NonMaximumSuppression.proto``: ``perClass`` suppresses "among predictions with the same
label (argmax of the confidence)", boxes "below the confidence threshold are discarded".)
ONNX Runtime 1.32's ``NonMaxSuppression``, measured (tests/test_nms_export.py): a pair at IoU exactly
equal to the threshold is not suppressed, a score exactly equal to the score threshold is not a
candidate, and of equal scores the lower box index goes first — the ONNX spec's and the reference's rules.
Consumers must therefore read ``num_dets`` and never rely on the padding values.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tinyvim_deploy.errors import ExportError

__all__ = [
    "OUTPUT_NAMES",
    "NMSConfig",
    "append_onnx_nms",
    "append_efficient_nms_trt",
    "structural_check_efficient_nms",
    "cut_before_nms",
    "coreml_detection_wrapper",
    "coreml_nms_pipeline",
]

OUTPUT_NAMES = ("num_dets", "boxes", "scores", "classes")  # drkd.md §7.3's contract, in this order
MIN_OPSET = 13  # GatherND batch_dims (12), ReduceSum/Unsqueeze/Slice with axes as inputs (13)
PLUGIN_OP = "EfficientNMS_TRT"
# TensorRT's ONNX parser dispatches on op_type alone: an op it has no importer for goes to its
# FallbackPluginImporter, which looks the plugin up by (op_type, plugin_version, plugin_namespace) and
# never reads the node's domain (onnx-tensorrt ModelImporter.cpp). A custom domain keeps the model valid
# for onnx.checker and shape inference (domain "" fails: "No Op registered for EfficientNMS_TRT"), and
# is what mmyolo's easydeploy and YOLOv7's end2end export emit (``g.op("TRT::EfficientNMS_TRT")``).
PLUGIN_DOMAIN = "TRT"
PLUGIN_MAX_CANDIDATES = 4096  # EfficientNMS_TRT runs NMS on its 4096 best (box, class) pairs only
COREML_CLASS_MULTIPLE = 80  # ultralytics#22309: ML-program NMS misbehaves unless C is a multiple of 80


@dataclasses.dataclass(frozen=True)
class NMSConfig:
    """NMS settings; the defaults are :class:`~tinyvim_deploy.models.detection.DetectorWithNMS`'s."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.6
    max_det: int = 100
    pre_nms_topk: int = 1000

    def __post_init__(self):
        # >= 0: the ONNX subgraph marks empty slots with score 0 and counts detections as scores > 0
        if not 0.0 <= self.score_threshold < 1.0:
            raise ExportError(f"NMS score threshold must be in [0, 1), got {self.score_threshold}.")
        if not 0.0 <= self.iou_threshold <= 1.0:  # ONNX NonMaxSuppression's own range
            raise ExportError(f"NMS IoU threshold must be in [0, 1], got {self.iou_threshold}.")
        if self.max_det < 1 or self.pre_nms_topk < 1:
            raise ExportError(f"NMS max_det and pre_nms_topk must be positive, got {self.max_det}, {self.pre_nms_topk}.")

    def as_kwargs(self) -> dict[str, float | int]:
        """Keyword arguments of :func:`~tinyvim_deploy.models.detection.multiclass_nms`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> NMSConfig:
        """The settings an export recorded in its ``nms`` metadata entry (the defaults where there is none)."""
        recorded = json.loads(metadata.get("nms", "{}"))
        return cls(**{k: v for k, v in recorded.items() if k != "kind"})


# --------------------------------------------------------------------------------------------------
# Shared ONNX plumbing
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Raw:
    """The network's raw outputs, after renaming: tensor names, static N and C, the batch dimension."""

    boxes: str
    scores: str
    n: int
    c: int
    batch: onnx.TensorShapeProto.Dimension
    elem_type: int


def _default_opset(model: onnx.ModelProto) -> int:
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


def _free_name(base: str, taken: set[str]) -> str:
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


def _prepare(model: onnx.ModelProto, boxes_name: str, scores_name: str) -> tuple[onnx.ModelProto, _Raw, set[str]]:
    """A copy whose outputs are removed and whose tensors named like the contract's outputs are renamed."""
    if _default_opset(model) < MIN_OPSET:
        raise ExportError(f"NMS needs ONNX opset >= {MIN_OPSET}; the model has {_default_opset(model)} "
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
        new = _free_name(f"raw_{name}", taken)
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
    return out, _Raw(raw_boxes, raw_scores, n, c, batch, elem), taken


def _contract_outputs(raw: _Raw, k: int, float_type: int = TensorProto.FLOAT) -> list[onnx.ValueInfoProto]:
    def info(name, elem, *dims):
        vi = helper.make_tensor_value_info(name, elem, [None] * (1 + len(dims)))
        shape = vi.type.tensor_type.shape
        shape.dim[0].CopyFrom(raw.batch)
        for d, size in zip(shape.dim[1:], dims):
            d.dim_value = size
        return vi

    return [info("num_dets", TensorProto.INT32, 1), info("boxes", float_type, k, 4),
            info("scores", float_type, k), info("classes", TensorProto.INT32, k)]


class _Builder:
    """Adds nodes and initializers under unique ``nms/`` names."""

    def __init__(self, graph: onnx.GraphProto, taken: set[str], opset: int):
        self.graph, self.taken, self.opset = graph, taken, opset

    def const(self, base: str, value) -> str:
        name = _free_name(f"nms/{base}", self.taken)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, outputs: int | Sequence[str] = 1, **attrs):
        names = ([_free_name(f"nms/{base}" if outputs == 1 else f"nms/{base}_{i}", self.taken) for i in range(outputs)]
                 if isinstance(outputs, int) else list(outputs))
        node_name = _free_name(f"nms/{base}_node", self.taken)
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if len(names) == 1 else names

    def reduce(self, op_type: str, x: str, axes: list[int], base: str, keepdims: int) -> str:
        # ReduceMax takes its axes as an input from opset 18 on, ReduceSum from 13 on
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(f"{base}_axes", np.array(axes, np.int64))], base, keepdims=keepdims)
        return self.op(op_type, [x], base, axes=axes, keepdims=keepdims)


# --------------------------------------------------------------------------------------------------
# ONNX Runtime: standard ops
# --------------------------------------------------------------------------------------------------


def append_onnx_nms(model: onnx.ModelProto, config: NMSConfig | None = None, boxes_name: str = "boxes",
                    scores_name: str = "scores") -> onnx.ModelProto:
    """Append the standard-op NMS subgraph of drkd.md §7.3; the result's outputs are exactly the contract.

    ``model``'s outputs ``boxes_name`` [B,N,4] and ``scores_name`` [B,N,C] must have static N and C (B may
    be dynamic); any other outputs are dropped. Boxes must be well-formed corners (x1 <= x2, y1 <= y2, as
    the decoder makes them): ORT re-orders flipped corners, the reference gives them area 0.

    Steps (K' = min(pre_nms_topk, N), W = max(C·K', max_det)):
    1. ``TopK`` (constant K') of the max-over-classes score, re-sorted into box-index order by a second
       ``TopK`` so that ties later break by box index as in the reference (skipped when K' = N);
    2. ``NonMaxSuppression`` on [B,K',4] and the transposed scores [B,C,K'], max per class
       min(max_det, K') (a class cannot place more in the top ``max_det``) -> ``selected [k,3]``;
    3. the selected scores are ``ScatterND``-ed into a zero [B,W] tensor at class·K' + position, then
       ``TopK(max_det)``: position = index mod K', class = index div K', ties by that flat index;
    4. a slot is a detection iff its score > 0 (score_threshold >= 0 and NMS keeps only scores above it):
       padding rows get boxes 0, scores 0, classes -1, and ``num_dets`` counts the rest.

    TensorRT: every op here is in the TensorRT 10 parser's list (NonMaxSuppression -> INMSLayer); every
    TopK has ``sorted=1`` and a constant K, which must stay < 3840 (pre_nms_topk, max_det). The
    data-dependent shapes are confined to ``selected [k,3]`` and the Slice/Mul/Add/Concat/GatherND ops on
    it that feed ScatterND's indices and updates; everything after ScatterND is fixed-shape again.
    No Loop, If or NonZero.

    Validating a whole exported detector against PyTorch: the subgraph equals the reference bit for bit
    on the *same* raw boxes/scores, but ORT's and PyTorch's network outputs differ by ~1e-7, which can swap
    near-tied candidates (seen on randomly initialised heads, whose scores are almost flat); compare the
    NMS on ORT's raw outputs, or match detections by IoU.
    """
    config = config or NMSConfig()
    out, raw, taken = _prepare(model, boxes_name, scores_name)
    b = _Builder(out.graph, taken, _default_opset(out))
    boxes, scores = raw.boxes, raw.scores
    if raw.elem_type != TensorProto.FLOAT:  # NMS runs in FP32 (drkd.md §7.3: decode and NMS stay float)
        boxes = b.op("Cast", [boxes], "boxes_f32", to=TensorProto.FLOAT)
        scores = b.op("Cast", [scores], "scores_f32", to=TensorProto.FLOAT)
    n, c = raw.n, raw.c
    k_pre = min(config.pre_nms_topk, n)
    width = max(c * k_pre, config.max_det)
    if n >= 2 ** 24:  # box indices pass through float32 in step 1
        raise ExportError(f"NMS supports up to 2**24 boxes, got {n}.")

    # 1. pre-NMS top-k (a constant K, clamped to N: detection_anchors.md "what we take" 2)
    if k_pre < n:
        best = b.reduce("ReduceMax", scores, [2], "max_class_score", keepdims=0)  # [B,N]
        k_pre_t = b.const("k_pre", np.array([k_pre], np.int64))
        _, top = b.op("TopK", [best, k_pre_t], "pre_topk", outputs=2, axis=1, largest=1, sorted=1)
        # back into ascending box index: a float TopK (exact below 2**24) so TensorRT sees no int64 TopK
        top_f = b.op("Cast", [top], "pre_index_f32", to=TensorProto.FLOAT)
        top_sorted, _ = b.op("TopK", [top_f, k_pre_t], "pre_index_sort", outputs=2, axis=1, largest=0, sorted=1)
        top = b.op("Cast", [top_sorted], "pre_index", to=TensorProto.INT64)
        gather_idx = b.op("Unsqueeze", [top, b.const("axis2", np.array([2], np.int64))], "pre_index_3d")
        boxes = b.op("GatherND", [boxes, gather_idx], "cand_boxes", batch_dims=1)  # [B,K',4]
        scores = b.op("GatherND", [scores, gather_idx], "cand_scores", batch_dims=1)  # [B,K',C]

    # 2. class-aware NMS
    scores_t = b.op("Transpose", [scores], "cand_scores_t", perm=[0, 2, 1])  # [B,C,K']
    selected = b.op("NonMaxSuppression", [
        boxes, scores_t,
        b.const("max_per_class", np.array([min(config.max_det, k_pre)], np.int64)),
        b.const("iou_threshold", np.array([config.iou_threshold], np.float32)),
        b.const("score_threshold", np.array([config.score_threshold], np.float32)),
    ], "selected", center_point_box=0)  # [k,3] (batch, class, position): k is data-dependent

    # 3. scatter then TopK
    def column(i: int) -> str:
        return b.op("Slice", [selected, b.const(f"col{i}_start", np.array([i], np.int64)),
                              b.const(f"col{i}_end", np.array([i + 1], np.int64)),
                              b.const("col_axis", np.array([1], np.int64))], f"selected_col{i}")  # [k,1]

    k_pre_scalar = b.const("k_pre_scalar", np.array(k_pre, np.int64))
    flat = b.op("Add", [b.op("Mul", [column(1), k_pre_scalar], "flat_class"), column(2)], "flat_index")
    scatter_idx = b.op("Concat", [column(0), flat], "scatter_index", axis=1)  # [k,2]: (batch, class·K' + pos)
    picked = b.op("GatherND", [scores_t, selected], "selected_scores")  # [k]
    batch = b.op("Slice", [b.op("Shape", [boxes], "boxes_shape"), b.const("zero", np.array([0], np.int64)),
                           b.const("one", np.array([1], np.int64))], "batch_size")
    dense_shape = b.op("Concat", [batch, b.const("width", np.array([width], np.int64))], "dense_shape", axis=0)
    zeros = b.op("ConstantOfShape", [dense_shape], "dense_zeros",
                 value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    dense = b.op("ScatterND", [zeros, scatter_idx, picked], "dense_scores")  # [B,W]
    top_scores, top_flat = b.op("TopK", [dense, b.const("max_det", np.array([config.max_det], np.int64))],
                                "final_topk", outputs=2, axis=1, largest=1, sorted=1)  # [B,K]
    position = b.op("Mod", [top_flat, k_pre_scalar], "det_position")
    cls = b.op("Div", [top_flat, k_pre_scalar], "det_class")
    det_boxes = b.op("GatherND", [boxes, b.op("Unsqueeze", [position, b.const("axis2b", np.array([2], np.int64))],
                                              "det_position_3d")], "det_boxes", batch_dims=1)  # [B,K,4]

    # 4. the contract (padding as the reference: boxes 0, scores 0, classes -1)
    valid = b.op("Greater", [top_scores, b.const("zero_f", np.array(0.0, np.float32))], "valid")
    valid_3d = b.op("Unsqueeze", [valid, b.const("axis2c", np.array([2], np.int64))], "valid_3d")
    b.op("Where", [valid_3d, det_boxes, b.const("zero_box", np.array(0.0, np.float32))], "boxes_out",
         outputs=["boxes"])
    b.op("Where", [valid, top_scores, b.const("zero_score", np.array(0.0, np.float32))], "scores_out",
         outputs=["scores"])
    cls_or_pad = b.op("Where", [valid, cls, b.const("pad_class", np.array(-1, np.int64))], "class_or_pad")
    b.op("Cast", [cls_or_pad], "classes_out", outputs=["classes"], to=TensorProto.INT32)
    # count in float: TensorRT's reduce layers are safest on float; exact far beyond any max_det
    count = b.reduce("ReduceSum", b.op("Cast", [valid], "valid_f32", to=TensorProto.FLOAT), [1], "count",
                     keepdims=1)
    b.op("Cast", [count], "num_dets_out", outputs=["num_dets"], to=TensorProto.INT32)

    out.graph.output.extend(_contract_outputs(raw, config.max_det))
    onnx.checker.check_model(out, full_check=True)  # full: strict shape/type inference over the new nodes
    return out


# --------------------------------------------------------------------------------------------------
# TensorRT: EfficientNMS_TRT
# --------------------------------------------------------------------------------------------------

# The attributes the contract needs (drkd.md §7.3): no background class, scores already activated,
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
    out, raw, taken = _prepare(model, boxes_name, scores_name)
    if raw.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise ExportError("EfficientNMS_TRT takes float32 or float16 boxes and scores.")
    attrs = {**_PLUGIN_FIXED, "max_output_boxes": config.max_det, "score_threshold": float(config.score_threshold),
             "iou_threshold": float(config.iou_threshold)}
    node = helper.make_node(PLUGIN_OP, [raw.boxes, raw.scores], list(OUTPUT_NAMES), name=_free_name("nms/efficient_nms",
                            taken), domain=domain, **attrs)
    out.graph.node.append(node)
    out.graph.output.extend(_contract_outputs(raw, config.max_det, raw.elem_type))
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


# --------------------------------------------------------------------------------------------------
# Core ML: the detection ML program + a NonMaximumSuppression model, as one Pipeline
# --------------------------------------------------------------------------------------------------


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = (int(s) for s in input_size)
    return h, w


class CoreMLDetectionOutputs(nn.Module):
    """(boxes [1,N,4] pixel x1y1x2y2, scores [1,N,C]) -> (confidence [N,C'], coordinates [N,4] cx,cy,w,h / size).

    C' = C rounded up to a multiple of ``class_multiple`` with zero columns (ultralytics#22309: Core ML's
    NMS in a pipeline with an ML program misbehaves otherwise); zero columns never pass the confidence
    threshold, so they only cost a little bandwidth. Batch 1 only: Vision runs one image per request.
    """

    def __init__(self, detector: nn.Module, input_size: int | Sequence[int], class_multiple: int = COREML_CLASS_MULTIPLE):
        super().__init__()
        self.detector = detector
        h, w = _hw(input_size)
        self.class_multiple = class_multiple
        self.register_buffer("normalise", torch.tensor([1.0 / w, 1.0 / h, 1.0 / w, 1.0 / h]), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.detector(image)
        boxes, scores = boxes[0], scores[0]
        centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        size = boxes[:, 2:] - boxes[:, :2]
        coordinates = torch.cat((centre, size), dim=1) * self.normalise
        pad = -scores.shape[-1] % self.class_multiple if self.class_multiple > 1 else 0
        confidence = F.pad(scores, (0, pad)) if pad else scores
        return confidence, coordinates


def coreml_detection_wrapper(detector: nn.Module, input_size: int | Sequence[int],
                             class_multiple: int = COREML_CLASS_MULTIPLE) -> nn.Module:
    """Wrap a detector for conversion to the ML program :func:`coreml_nms_pipeline` expects (eval mode)."""
    return CoreMLDetectionOutputs(detector, input_size, class_multiple).eval()


def coreml_nms_pipeline(mlmodel, config: NMSConfig | None, class_names: Sequence[str],
                        input_size: int | Sequence[int]):
    """The detection ML program followed by Core ML's ``NonMaximumSuppression``, as one Pipeline model.

    ``mlmodel`` is the converted :func:`coreml_detection_wrapper`: one input (an image, for Vision) and two
    outputs, [N,C'] confidences and [N,4] normalised cx,cy,w,h coordinates, named ``confidence`` /
    ``coordinates`` (renamed here to ``raw_*``, since the pipeline's outputs take those names) or given
    in that order, both float32 (an iOS16+ FP16 program needs ``ct.TensorType(..., dtype=np.float32)``
    outputs). The pipeline has the inputs ``image`` (the program's input), ``iouThreshold`` and
    ``confidenceThreshold`` (optional doubles overriding the config's values) and outputs ``confidence
    [0..,C']`` and ``coordinates [0..,4]``: variable-length, one row per kept box, no ``max_det`` cap.
    NMS is per class (``pickTop.perClass``), but Core ML gives each box one label (its argmax) where the
    other backends keep every (box, class) pair above the threshold. Vision reads a row's confidences as
    summing to at most 1 (the proto's rule); our per-class scores are independent, so its object-level
    confidence can exceed what one class says. Class labels beyond ``class_names`` (the zero-padding
    columns) are called ``unused_<i>``. The outputs' row range is [0, unbounded): Core ML could also cap
    or pad rows (an upper bound on the shape range), which Vision does not need and nothing here tests.

    Building and saving work on Linux; prediction needs macOS.
    """
    from tinyvim_deploy.export.coreml_export import import_coremltools

    ct = import_coremltools()
    config = config or NMSConfig()
    spec = mlmodel.get_spec()
    if len(spec.description.output) != 2 or len(spec.description.input) != 1:
        raise ExportError("The detection Core ML model needs one input and two outputs (confidence, coordinates).")
    names = [o.name for o in spec.description.output]
    if set(names) == {"confidence", "coordinates"}:
        order = [names.index("confidence"), names.index("coordinates")]
    else:
        order = [0, 1]
    for i, new in zip(order, ("raw_confidence", "raw_coordinates")):
        old = spec.description.output[i].name
        if old != new:
            ct.utils.rename_feature(spec, old, new, rename_inputs=False)
    confidence_out, coordinates_out = (spec.description.output[i] for i in order)
    conf_shape = list(confidence_out.type.multiArrayType.shape)
    coord_shape = list(coordinates_out.type.multiArrayType.shape)
    if len(conf_shape) != 2 or coord_shape != [conf_shape[0], 4]:
        raise ExportError(f"Core ML detection outputs should be confidence [N,C] and coordinates [N,4], got "
                          f"{conf_shape} and {coord_shape}.")
    array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    for feature in (confidence_out, coordinates_out):
        if feature.type.multiArrayType.dataType not in (array_type.FLOAT32, array_type.DOUBLE):
            # NonMaximumSuppression.proto asks for double inputs; float32 is what Ultralytics' pipelines ship.
            # An iOS16+ FP16 program outputs float16 unless told otherwise.
            raise ExportError(f"Core ML NMS needs float32 (or double) inputs; {feature.name!r} is "
                              f"{array_type.ArrayDataType.Name(feature.type.multiArrayType.dataType)}: convert with "
                              "outputs=[ct.TensorType(name=..., dtype=np.float32), ...].")
    num_columns = conf_shape[1]
    if len(class_names) > num_columns:
        raise ExportError(f"{len(class_names)} class names for {num_columns} confidence columns.")
    labels = list(class_names) + [f"unused_{i}" for i in range(len(class_names), num_columns)]
    image = spec.description.input[0]
    h, w = _hw(input_size)
    if image.type.WhichOneof("Type") == "imageType" and (image.type.imageType.height, image.type.imageType.width) != (h, w):
        raise ExportError(f"The Core ML model's image is {image.type.imageType.height}x{image.type.imageType.width}, "
                          f"not {h}x{w}.")
    weights_dir = getattr(mlmodel, "weights_dir", None)
    detector = ct.models.MLModel(spec, weights_dir=weights_dir, skip_model_load=True)

    nms_spec = ct.proto.Model_pb2.Model()
    nms_spec.specificationVersion = spec.specificationVersion
    for feature, out_name in ((confidence_out, "confidence"), (coordinates_out, "coordinates")):
        nms_spec.description.input.add().CopyFrom(feature)
        out = nms_spec.description.output.add()
        out.CopyFrom(feature)
        out.name = out_name
        # one row per kept box: [0.., columns]
        array = out.type.multiArrayType
        columns = array.shape[-1]
        del array.shape[:]
        rows, cols = array.shapeRange.sizeRanges.add(), array.shapeRange.sizeRanges.add()
        rows.lowerBound, rows.upperBound = 0, -1
        cols.lowerBound = cols.upperBound = columns
    nms = nms_spec.nonMaximumSuppression
    nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName = confidence_out.name, coordinates_out.name
    nms.confidenceOutputFeatureName, nms.coordinatesOutputFeatureName = "confidence", "coordinates"
    nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName = "iouThreshold", "confidenceThreshold"
    nms.iouThreshold, nms.confidenceThreshold = float(config.iou_threshold), float(config.score_threshold)
    nms.pickTop.perClass = True  # class-aware, like the reference (users expect it: ultralytics#8118)
    nms.stringClassLabels.vector.extend(labels)
    nms_model = ct.models.MLModel(nms_spec, skip_model_load=True)

    pipeline = ct.models.pipeline.Pipeline(
        input_features=[(image.name, ct.models.datatypes.Array(3, h, w)),
                        ("iouThreshold", ct.models.datatypes.Double()),
                        ("confidenceThreshold", ct.models.datatypes.Double())],
        output_features=["confidence", "coordinates"],
    )
    pipeline.add_model(detector)
    pipeline.add_model(nms_model)
    described = pipeline.spec.description
    described.input[0].CopyFrom(image)  # the program's own input (an ImageType for Vision)
    for i in (1, 2):  # the thresholds are optional: NMS falls back to its stored values
        described.input[i].type.isOptional = True
    described.output[0].CopyFrom(nms_spec.description.output[0])
    described.output[1].CopyFrom(nms_spec.description.output[1])
    pipeline.spec.specificationVersion = spec.specificationVersion
    described.metadata.userDefined.update({
        "com.apple.coreml.model.preview.type": "objectDetector",  # Xcode's preview draws the boxes
        "tinyvim_deploy.nms_iou_threshold": str(config.iou_threshold),
        "tinyvim_deploy.nms_score_threshold": str(config.score_threshold),
        "tinyvim_deploy.num_classes": str(len(class_names)),
        "tinyvim_deploy.confidence_columns": str(num_columns),
    })
    described.input[1].shortDescription = f"(optional) IoU threshold override (default {config.iou_threshold})"
    described.input[2].shortDescription = (f"(optional) confidence threshold override (default "
                                            f"{config.score_threshold})")
    described.output[0].shortDescription = "boxes × class confidence (columns beyond the classes are padding)"
    described.output[1].shortDescription = "boxes × [cx, cy, w, h], relative to the input size"
    return ct.models.MLModel(pipeline.spec, weights_dir=weights_dir, skip_model_load=True)
