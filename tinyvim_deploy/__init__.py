"""tinyvim-deploy: TinyViM and its family from PyTorch to ONNX Runtime, TensorRT and Core ML, exactly.

Public API: :func:`list_models`, :func:`create_model`, :func:`reparameterize`, :func:`get_spec`, the
:class:`Predictor` and its result classes, and the exception hierarchy in :mod:`tinyvim_deploy.errors`.

``import tinyvim_deploy`` is light: everything but the version and the errors is imported on first use
(PEP 562), so the command line's ``--version`` and ``--help`` never pay for torch. Heavy runtimes
(TensorRT, coremltools) are imported only by the backend that uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from tinyvim_deploy.errors import (  # noqa: E402  (the errors import nothing: cheap to load eagerly)
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

if TYPE_CHECKING:  # what the lazy attributes are, for type checkers and IDEs
    from tinyvim_deploy.models import ModelSpec, create_model, get_spec, list_models, reparameterize
    from tinyvim_deploy.predictor import ClassificationResult, Predictor
    from tinyvim_deploy.tasks.detection import DetectionResult
    from tinyvim_deploy.tasks.segmentation import SegmentationResult

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "ModelSpec": "tinyvim_deploy.models",
    "create_model": "tinyvim_deploy.models",
    "get_spec": "tinyvim_deploy.models",
    "list_models": "tinyvim_deploy.models",
    "reparameterize": "tinyvim_deploy.models",
    "Predictor": "tinyvim_deploy.predictor",
    "ClassificationResult": "tinyvim_deploy.predictor",
    "SegmentationResult": "tinyvim_deploy.tasks.segmentation",
    "DetectionResult": "tinyvim_deploy.tasks.detection",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tinyvim_deploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
