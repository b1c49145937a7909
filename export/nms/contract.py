"""The NMS output contract every backend meets, and the settings they share (:class:`NMSConfig`).

A detector with NMS outputs ``num_dets [B,1] int32, boxes [B,K,4] float32, scores [B,K] float32,
classes [B,K] int32`` with K = ``max_det``, under exactly the names in :data:`OUTPUT_NAMES` (what the
Predictor reads); only the first ``num_dets[b]`` rows of image b are detections. No onnx, torch or
coremltools here: reading an artifact's NMS settings needs none of them.
"""

from __future__ import annotations

import dataclasses
import json

from tinyvim_deploy.errors import ExportError

__all__ = ["OUTPUT_NAMES", "NMSConfig"]

OUTPUT_NAMES = ("num_dets", "boxes", "scores", "classes")  # the contract's outputs, in this order


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
        """Keyword arguments of :func:`~tinyvim_deploy.tasks.nms.multiclass_nms`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> NMSConfig:
        """The settings an export recorded in its ``nms`` metadata entry (the defaults where there is none)."""
        recorded = json.loads(metadata.get("nms", "{}"))
        return cls(**{k: v for k, v in recorded.items() if k != "kind"})
