"""QDQ quantization with onnxruntime's tools, from cached ranges, in one of two profiles.

Profiles:
- ``ort-cpu``: uint8 asymmetric activations, int8 symmetric per-channel weights; Q/DQ on the inputs
  and outputs of Conv/Gemm/MatMul so ORT's CPU EP fuses them into QLinearConv/QLinearMatMul.
- ``tensorrt``: int8 **symmetric** activations (zero point 0) and per-channel weights, Q/DQ on the
  *inputs* of Conv/Gemm/MatMul only, one dedicated pair per consumer: the placement TensorRT's
  explicit-quantization fusion expects.

What is quantized: only Conv, Gemm and MatMul (see ``ranges.QUANTIZED_OP_TYPES``), minus the nodes
of the groups kept in float. The ``tinyvim::`` custom ops and their function bodies are never
quantized (onnxruntime has no quantizer for them), and neither are Softmax, LayerNorm, GELU, the
Einsum projections or element-wise ops; tensors that flow from a quantized Conv into them are
dequantized first.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path

import onnx

from tinyvim_deploy.calibration.ranges import QUANTIZED_OP_TYPES, ort_method, quiet_ort_logging
from tinyvim_deploy.errors import CalibrationError


@dataclasses.dataclass(frozen=True)
class QuantProfile:
    name: str
    activation_type: str  # onnxruntime QuantType name
    extra_options: dict
    description: str


PROFILES = {
    "ort-cpu": QuantProfile("ort-cpu", "QUInt8", {"WeightSymmetric": True, "ActivationSymmetric": False},
                            "uint8 asymmetric activations, int8 per-channel weights; fused by ORT's CPU EP"),
    "tensorrt": QuantProfile("tensorrt", "QInt8",
                             {"WeightSymmetric": True, "ActivationSymmetric": True, "DedicatedQDQPair": True,
                              "QDQKeepRemovableActivations": True,
                              "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)},
                             "int8 symmetric activations (zero point 0) on op inputs only; TensorRT-ready"),
}


def get_profile(name: str) -> QuantProfile:
    if name not in PROFILES:
        raise CalibrationError(f"Unknown INT8 profile {name!r}: choose {', '.join(PROFILES)}.")
    return PROFILES[name]


def quantizable_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Quantizable nodes grouped by the module their weight belongs to, in graph order.

    The group is the weight's name up to the first named child after the indices:
    ``network.4.2.dwconv.weight`` → ``network.4.2`` (a block), ``head.weight`` → ``head``.
    """
    inits = {i.name for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    current = "<input>"
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OP_TYPES:
            continue
        weight = next((name for name in node.input[1:] if name in inits), "")
        if "." in weight:  # a module's parameter; folded constants (``_v_12``) join the group before them
            current = module_group(weight)
        groups.setdefault(current, []).append(node.name)
    return groups


def module_group(weight_name: str) -> str:
    """The block a weight belongs to: its path up to the last index of the first run of indices.

    ``network.4.2.dwconv.weight`` -> ``network.4.2``; ``backbone.network.4.2.mlp.fc1.weight`` ->
    ``backbone.network.4.2``; ``decode_head.SIM.0.fuse1.conv.weight`` -> ``decode_head.SIM.0``; a path
    without indices is its module (``head.weight`` -> ``head``, ``decode_head.conv_seg.weight`` ->
    ``decode_head.conv_seg``).
    """
    parts = weight_name.split(".")
    indices = [i for i, part in enumerate(parts) if re.fullmatch(r"\d+", part)]
    if not indices:
        return ".".join(parts[:-1]) or parts[0]
    end = indices[0]
    while end + 1 < len(parts) and re.fullmatch(r"\d+", parts[end + 1]):
        end += 1
    return ".".join(parts[: end + 1])


def quantize_with_ranges(float_path, output, ranges: dict, method: str, profile: QuantProfile,
                         nodes_to_exclude=(), nodes_to_quantize=()) -> None:
    """Write a QDQ model from the float model and precomputed ranges (no calibration run)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="tvd-quant-") as tmp, quiet_ort_logging():
        cache = Path(tmp) / "ranges.json"
        cache.write_text(json.dumps(ranges))
        quantize_static(
            str(float_path), str(output), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, reduce_range=False,
            activation_type=getattr(QuantType, profile.activation_type), weight_type=QuantType.QInt8,
            nodes_to_exclude=list(nodes_to_exclude), nodes_to_quantize=list(nodes_to_quantize),
            calibrate_method=ort_method(method), calibration_cache_path=str(cache),
            extra_options=dict(profile.extra_options),
        )
