"""What a validation produced: one :class:`Check` per (input, output) compared, and the report.

Kept free of torch and onnxruntime so the task modules, which own the comparisons, stay light.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Check:
    name: str  # which input (and which output, where a task compares several)
    max_abs: float
    mean_abs: float
    top1_agree: float | None  # classification: samples whose argmax agrees; segmentation: pixels whose argmax agrees
    passed: bool
    miou: float | None = None  # segmentation: mIoU of the candidate's argmax map against the reference's
    labels: bool = False  # integer label maps were compared (max_abs/mean_abs = fraction of pixels that differ)
    info: bool = False  # reported, not judged (detections end to end: 1 - agreement), not in the report's max_abs


@dataclasses.dataclass
class ValidationReport:
    checks: list[Check]
    atol: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def max_abs(self) -> float:
        return max(c.max_abs for c in self.checks if not c.info)


def value_check(reference: np.ndarray, candidate: np.ndarray, name: str, atol: float,
                top1: float | None = None, miou: float | None = None) -> Check:
    """Max/mean abs difference of two float arrays, passed when finite and within ``atol``."""
    diff = np.abs(reference.astype(np.float64) - candidate)
    ok = bool(np.isfinite(candidate).all() and diff.max() <= atol)
    return Check(name, float(diff.max()), float(diff.mean()), top1, ok, miou)


def label_map_check(reference: np.ndarray, candidate: np.ndarray, name: str) -> Check:
    """Integer label maps: judged by the share of pixels that agree (argmax ties may flip 0.1 %)."""
    agree = float(np.mean(reference == candidate))
    miou = map_agreement_miou(reference, candidate, int(max(reference.max(), candidate.max())) + 1)
    return Check(name, 1.0 - agree, 1.0 - agree, agree, agree >= 0.999, miou, labels=True)


def map_agreement_miou(reference: np.ndarray, candidate: np.ndarray, num_classes: int) -> float:
    """mIoU of one label map against another, over the classes present in either (1.0 when identical)."""
    ref, got = reference.ravel().astype(np.int64), candidate.ravel().astype(np.int64)
    inter = np.bincount(ref[ref == got], minlength=num_classes)
    union = np.bincount(ref, minlength=num_classes) + np.bincount(got, minlength=num_classes) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else 1.0
