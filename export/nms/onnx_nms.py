"""ONNX Runtime's NMS: a standard-op subgraph (``TopK`` -> ``NonMaxSuppression`` -> scatter then ``TopK``).

It reproduces the reference :func:`tinyvim_deploy.tasks.nms.multiclass_nms` exactly, tie-breaks included,
and uses only ops TensorRT's ONNX parser also accepts (see :func:`append_onnx_nms`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.nms.contract import NMSConfig
from tinyvim_deploy.export.nms.graph import contract_outputs, default_opset, free_name, prepare_outputs

__all__ = ["append_onnx_nms"]


class _Builder:
    """Adds nodes and initializers under unique ``nms/`` names."""

    def __init__(self, graph: onnx.GraphProto, taken: set[str], opset: int):
        self.graph, self.taken, self.opset = graph, taken, opset

    def const(self, base: str, value) -> str:
        name = free_name(f"nms/{base}", self.taken)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, outputs: int | Sequence[str] = 1, **attrs):
        names = ([free_name(f"nms/{base}" if outputs == 1 else f"nms/{base}_{i}", self.taken) for i in range(outputs)]
                 if isinstance(outputs, int) else list(outputs))
        node_name = free_name(f"nms/{base}_node", self.taken)
        self.graph.node.append(helper.make_node(op_type, list(inputs), names, name=node_name, **attrs))
        return names[0] if len(names) == 1 else names

    def reduce(self, op_type: str, x: str, axes: list[int], base: str, keepdims: int) -> str:
        # ReduceMax takes its axes as an input from opset 18 on, ReduceSum from 13 on
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(f"{base}_axes", np.array(axes, np.int64))], base, keepdims=keepdims)
        return self.op(op_type, [x], base, axes=axes, keepdims=keepdims)


def append_onnx_nms(model: onnx.ModelProto, config: NMSConfig | None = None, boxes_name: str = "boxes",
                    scores_name: str = "scores") -> onnx.ModelProto:
    """Append the standard-op NMS subgraph; the result's outputs are exactly the contract.

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
    out, raw, taken = prepare_outputs(model, boxes_name, scores_name)
    b = _Builder(out.graph, taken, default_opset(out))
    boxes, scores = raw.boxes, raw.scores
    if raw.elem_type != TensorProto.FLOAT:  # NMS runs in FP32, even after an FP16 network
        boxes = b.op("Cast", [boxes], "boxes_f32", to=TensorProto.FLOAT)
        scores = b.op("Cast", [scores], "scores_f32", to=TensorProto.FLOAT)
    n, c = raw.n, raw.c
    k_pre = min(config.pre_nms_topk, n)
    width = max(c * k_pre, config.max_det)
    if n >= 2 ** 24:  # box indices pass through float32 in step 1
        raise ExportError(f"NMS supports up to 2**24 boxes, got {n}.")

    # 1. pre-NMS top-k (a constant K, clamped to N, so that TensorRT sees a constant TopK)
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

    out.graph.output.extend(contract_outputs(raw, config.max_det))
    onnx.checker.check_model(out, full_check=True)  # full: strict shape/type inference over the new nodes
    return out
