"""Accuracy budget: which layer groups to keep in float so that INT8 stays within a target.

1. Quantize each group *alone* and measure the output error it causes on the decision data
   (relative L2 error of the logits, and top-1 flips) — the group's sensitivity.
2. Quantize everything; while the target is missed, move the most sensitive group still in INT8
   back to float and measure again.

The target is top-1 agreement with the float model (``min_agreement``) and, when labels exist,
an accuracy drop of at most ``max_drop`` points. Nothing here is tuned to one model: the groups
come from the graph, the order from the measurement.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinyvim_deploy.calibration.compare import Agreement, agreement, run_onnx
from tinyvim_deploy.calibration.quantize import QuantProfile, quantize_with_ranges


@dataclasses.dataclass
class GroupSensitivity:
    name: str
    nodes: list[str]
    relative_error: float  # ||logits_q - logits|| / ||logits|| with only this group quantized
    top1_agreement: float
    decision: str = "int8"  # or "float"


@dataclasses.dataclass
class BudgetResult:
    groups: list[GroupSensitivity]
    float_groups: list[str]
    final: Agreement  # on the decision data, with the chosen float groups
    met: bool
    steps: list[tuple[str, Agreement]]  # (group moved to float, agreement after) — "" for all-int8


def _relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / max(np.linalg.norm(reference), 1e-12))


def meets(result: Agreement, min_agreement: float, max_drop: float | None) -> bool:
    if result.top1_agreement < min_agreement:
        return False
    drop = result.accuracy_drop
    return max_drop is None or drop is None or drop <= max_drop


def choose_float_groups(
    float_path, groups: dict[str, list[str]], ranges: dict, method: str, profile: QuantProfile,
    tensors: np.ndarray, labels: np.ndarray | None, *, min_agreement: float = 0.99, max_drop: float | None = 1.0,
    sensitivity_samples: int = 64, progress: Callable[[str], None] | None = None,
) -> BudgetResult:
    """Measure every group's sensitivity, then keep the worst in float until the target is met."""
    reference = run_onnx(float_path, tensors)
    probe = tensors[:sensitivity_samples]
    probe_reference = reference[: len(probe)]
    sens: list[GroupSensitivity] = []
    with tempfile.TemporaryDirectory(prefix="tvd-sens-") as tmp:
        scratch = Path(tmp) / "q.onnx"
        for name, nodes in groups.items():
            if progress:
                progress(f"sensitivity {name}")
            quantize_with_ranges(float_path, scratch, ranges, method, profile, nodes_to_quantize=nodes)
            out = run_onnx(scratch, probe)
            sens.append(GroupSensitivity(name, nodes, _relative_error(probe_reference, out),
                                         agreement(probe_reference, out).top1_agreement))

        by_harm = sorted(sens, key=lambda g: g.relative_error, reverse=True)
        float_groups: list[str] = []
        steps: list[tuple[str, Agreement]] = []
        while True:
            excluded = [n for g in sens if g.name in float_groups for n in g.nodes]
            if progress:
                progress(f"budget: {len(float_groups)} groups in float")
            quantize_with_ranges(float_path, scratch, ranges, method, profile, nodes_to_exclude=excluded)
            current = agreement(reference, run_onnx(scratch, tensors), labels)
            steps.append((float_groups[-1] if float_groups else "", current))
            if meets(current, min_agreement, max_drop) or len(float_groups) == len(sens):
                break
            float_groups.append(by_harm[len(float_groups)].name)
    for g in sens:
        g.decision = "float" if g.name in float_groups else "int8"
    return BudgetResult(sens, float_groups, current, meets(current, min_agreement, max_drop), steps)
