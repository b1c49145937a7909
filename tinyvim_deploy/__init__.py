"""tinyvim-deploy: TinyViM and its family from PyTorch to ONNX Runtime, TensorRT and CoreML, exactly.

Public API: :func:`list_models`, :func:`create_model`, :func:`reparameterize`, :func:`get_spec`
and the exception hierarchy in :mod:`tinyvim_deploy.errors`. Heavy runtimes (TensorRT, coremltools,
OpenVINO) are never imported here; each backend imports its own library when it is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tinyvim_deploy.errors import (  # noqa: E402
    ArtifactError,
    BackendUnavailableError,
    CalibrationError,
    CheckpointError,
    CheckpointNotFoundError,
    DatasetError,
    ExportError,
    ImageError,
    InputSizeError,
    TinyViMDeployError,
    UnknownModelError,
    ValidationError,
)
from tinyvim_deploy.models import (  # noqa: E402
    ModelSpec,
    create_model,
    get_spec,
    list_models,
    reparameterize,
)


def __getattr__(name: str):
    # Predictor pulls in OpenCV and the runtimes: import it on first use only.
    if name in ("Predictor", "ClassificationResult"):
        from tinyvim_deploy import predictor

        return getattr(predictor, name)
    if name == "SegmentationResult":
        from tinyvim_deploy import segmentation

        return segmentation.SegmentationResult
    if name == "DetectionResult":
        from tinyvim_deploy import detection

        return detection.DetectionResult
    raise AttributeError(f"module 'tinyvim_deploy' has no attribute {name!r}")


__all__ = [
    "ClassificationResult",
    "DetectionResult",
    "Predictor",
    "SegmentationResult",
    "ArtifactError",
    "BackendUnavailableError",
    "CalibrationError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "DatasetError",
    "ExportError",
    "ImageError",
    "InputSizeError",
    "ModelSpec",
    "TinyViMDeployError",
    "UnknownModelError",
    "ValidationError",
    "__version__",
    "create_model",
    "get_spec",
    "list_models",
    "reparameterize",
]
