"""NMS attached to an exported detector, one output contract for every backend.

A detector is exported without NMS, ending at ``boxes [B,N,4]`` (x1y1x2y2, input pixels) and
``scores [B,N,C]`` (already activated); this package appends the post-processing, one module per backend:

- **ONNX Runtime** (:func:`append_onnx_nms`, ``onnx_nms.py``): a standard-op subgraph, pre-NMS
  ``TopK`` -> ONNX ``NonMaxSuppression`` -> "scatter then TopK" -> the fixed-K contract. It reproduces
  :func:`tinyvim_deploy.tasks.nms.multiclass_nms` exactly (tested: counts, boxes, scores, classes and
  padding), including its tie-breaks;
- **TensorRT** (:func:`append_efficient_nms_trt`, ``efficient_nms.py``): one ``EfficientNMS_TRT``
  plugin node whose four outputs are the contract. It cannot run without TensorRT, so
  :func:`structural_check_efficient_nms` checks the node and :func:`cut_before_nms` gives the part ONNX
  Runtime can run;
- **Core ML** (:func:`coreml_nms_pipeline`, ``coreml_nms.py``): a Pipeline of the detection ML program
  and Core ML's ``NonMaximumSuppression`` model, the layout Vision's object-detection requests expect;
  :func:`coreml_detection_wrapper` gives the ML program its ``confidence`` / ``coordinates`` outputs.

The contract (``contract.py``: :data:`OUTPUT_NAMES`, :class:`NMSConfig`): ``num_dets [B,1] int32,
boxes [B,K,4] float32, scores [B,K] float32, classes [B,K] int32`` with K = ``max_det``; only the first
``num_dets[b]`` rows of image b are detections.

Output names: the appended graphs' outputs are literally ``num_dets, boxes, scores, classes`` (what the
Predictor reads), so the network's own ``boxes`` / ``scores`` tensors are renamed inside the graph
(to ``raw_boxes`` / ``raw_scores``, or a free variant of these names) before NMS is attached
(``graph.py``, shared by the two ONNX backends).

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

Importing this package imports onnx and torch, never coremltools (only :func:`coreml_nms_pipeline` does).
The modules are named ``*_nms.py`` rather than after the libraries: a submodule ``onnx`` would become
the package attribute ``onnx``, replacing the library for any code here that does ``import onnx``.
"""

from tinyvim_deploy.export.nms.contract import OUTPUT_NAMES, NMSConfig
from tinyvim_deploy.export.nms.coreml_nms import (
    COREML_CLASS_MULTIPLE,
    CoreMLDetectionOutputs,
    coreml_detection_wrapper,
    coreml_nms_pipeline,
)
from tinyvim_deploy.export.nms.efficient_nms import (
    PLUGIN_DOMAIN,
    PLUGIN_MAX_CANDIDATES,
    PLUGIN_OP,
    append_efficient_nms_trt,
    cut_before_nms,
    has_efficient_nms,
    structural_check_efficient_nms,
)
from tinyvim_deploy.export.nms.graph import MIN_OPSET
from tinyvim_deploy.export.nms.onnx_nms import append_onnx_nms

__all__ = [
    "COREML_CLASS_MULTIPLE",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "PLUGIN_DOMAIN",
    "PLUGIN_MAX_CANDIDATES",
    "PLUGIN_OP",
    "CoreMLDetectionOutputs",
    "NMSConfig",
    "append_efficient_nms_trt",
    "append_onnx_nms",
    "coreml_detection_wrapper",
    "coreml_nms_pipeline",
    "cut_before_nms",
    "has_efficient_nms",
    "structural_check_efficient_nms",
]
