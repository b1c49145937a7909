"""ONNX Runtime backend: runs exported ``.onnx`` files (custom ops through their local functions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import BackendUnavailableError
from tinyvim_deploy.runtimes.base import Backend, TensorInfo, run_in_batches

# Execution providers chosen by --device, when the installed onnxruntime has them.
DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider", "CPUExecutionProvider"],
}


def ort_session(path_or_bytes, threads: int | None = None, providers: list[str] | None = None):
    """The one ONNX Runtime session set-up: ``threads`` intra-op threads, one inter-op thread, no spinning
    (ORT and torch in one process: spinning thread pools fight for the cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path_or_bytes, options, providers=providers or ["CPUExecutionProvider"])


def run_session(session, batch: np.ndarray) -> list[np.ndarray]:
    """All outputs of an ORT ``session`` on ``batch`` of any size (split into its static batch if it has one)."""
    inp = session.get_inputs()[0]
    static = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    return run_in_batches(lambda x: session.run(None, {inp.name: x}), batch, static)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        from tinyvim_deploy.export.metadata import (
            class_names_from_metadata,
            load_onnx_file,
            read_metadata,
            spec_from_metadata,
        )

        path = Path(self.artifact)
        proto = load_onnx_file(path)
        meta = read_metadata(proto)
        self.spec, self.input_hw = spec_from_metadata(meta, str(path))
        self.class_names = class_names_from_metadata(meta)
        self.metadata = meta
        if '"efficient-nms"' in meta.get("nms", ""):
            raise BackendUnavailableError(f"{path.name} ends in TensorRT's EfficientNMS_TRT plugin, which only "
                                          "TensorRT runs: build an engine from it, or export with --nms onnx for ORT.")

        wanted = DEVICE_PROVIDERS.get(self.device)
        if wanted is None:
            raise BackendUnavailableError(f"Unknown device {self.device!r} for onnxruntime: "
                                          f"choose {', '.join(DEVICE_PROVIDERS)}.")
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendUnavailableError(f"onnxruntime here has no {wanted[0]} (available: {', '.join(available)}).")
        self.session = ort_session(str(path), self.threads, [p for p in wanted if p in available])
        self._input = self.session.get_inputs()[0].name

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self._input: batch})

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(i.name, tuple(i.shape), i.type) for i in self.session.get_inputs()]

    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo(o.name, tuple(o.shape), o.type) for o in self.session.get_outputs()]

    def describe(self) -> str:
        return f"onnxruntime ({self.session.get_providers()[0]})"
