"""Runtime backends behind one interface (one file per runtime, imported only when used)."""

from __future__ import annotations

import importlib
from pathlib import Path

from tinyvim_deploy.errors import ArtifactError, BackendUnavailableError
from tinyvim_deploy.runtimes.base import Backend, TensorInfo

# name -> "module:Class"; heavy libraries are imported inside each module, on first use.
BACKENDS = {
    "onnxruntime": "tinyvim_deploy.runtimes.onnxruntime:OnnxRuntimeBackend",
    "torch": "tinyvim_deploy.runtimes.torch:TorchBackend",
    "coreml": "tinyvim_deploy.runtimes.coreml:CoreMLBackend",
    "tensorrt": "tinyvim_deploy.runtimes.tensorrt:TensorRTBackend",
}
ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "pytorch": "torch", "trt": "tensorrt"}
SUFFIXES = {".onnx": "onnxruntime", ".mlpackage": "coreml", ".engine": "tensorrt", ".plan": "tensorrt"}


def backend_class(name: str) -> type[Backend]:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        raise BackendUnavailableError(f"Unknown backend {name!r}: choose {', '.join(BACKENDS)}.")
    module, cls = BACKENDS[key].split(":")
    return getattr(importlib.import_module(module), cls)


def backend_for(artifact) -> str:
    """The backend an artifact needs: by file suffix, or ``torch`` for a model name."""
    from tinyvim_deploy.models import list_models

    suffix = Path(str(artifact)).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if str(artifact).lower().replace("_", "-") in list_models():
        return "torch"
    if not Path(str(artifact)).exists():
        raise ArtifactError(f"{artifact} is neither a file nor a model name (models: {', '.join(list_models())}).")
    raise ArtifactError(f"Cannot tell which runtime runs {artifact}: pass backend= (one of {', '.join(BACKENDS)}).")


def load_backend(artifact, backend: str | None = None, **kwargs) -> Backend:
    return backend_class(backend or backend_for(artifact))(artifact, **kwargs)


__all__ = ["BACKENDS", "Backend", "TensorInfo", "backend_class", "backend_for", "load_backend"]
