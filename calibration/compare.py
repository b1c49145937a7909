"""How close a quantized model is to its float original: agreement, cosine, accuracy and its drop."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Agreement:
    n: int
    top1_agreement: float  # same top-1 class as the float model
    top5_agreement: float  # the float model's top-1 is within the quantized model's top-5
    cosine: float  # mean cosine similarity of the logit vectors
    max_abs_diff: float
    float_accuracy: float | None = None  # when labels are known
    quant_accuracy: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy lost by quantizing, in percentage points (negative: it gained)."""
        if self.float_accuracy is None or self.quant_accuracy is None:
            return None
        return 100.0 * (self.float_accuracy - self.quant_accuracy)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "accuracy_drop": self.accuracy_drop}


def agreement(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> Agreement:
    """Compare two N×C logit arrays (reference = float model)."""
    ref_top1 = reference.argmax(1)
    k = min(5, candidate.shape[1])
    cand_topk = np.argsort(-candidate, axis=1, kind="stable")[:, :k]
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(1) / np.maximum(norms, 1e-12)
    result = Agreement(
        n=len(reference),
        top1_agreement=float((ref_top1 == candidate.argmax(1)).mean()),
        top5_agreement=float((cand_topk == ref_top1[:, None]).any(1).mean()),
        cosine=float(cosine.mean()),
        max_abs_diff=float(np.abs(reference - candidate).max()),
    )
    if labels is not None:
        result.float_accuracy = float((ref_top1 == labels).mean())
        result.quant_accuracy = float((candidate.argmax(1) == labels).mean())
    return result


def run_onnx(path, tensors: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX classifier for a preprocessed batch (any size; static batches are split)."""
    from tinyvim_deploy.runtimes.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(path, threads=threads) as backend:
        return backend.run(tensors)[0]
