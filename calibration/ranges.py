"""Activation ranges: computed once by onnxruntime's calibrators, cached, never stale.

The cache is a JSON file holding onnxruntime's own tensor-range payload next to the key it was
computed for: the sha256 of the float model, of the calibration set and the method. A cache is
reused only when all three match; otherwise the ranges are recomputed and the file replaced.
The same ranges are also written as a TensorRT calibration table for ONNX Runtime's TensorRT EP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tinyvim_deploy.calibration.data import CalibrationSet
from tinyvim_deploy.errors import CalibrationError
from tinyvim_deploy.fileio import atomic_output, file_sha256, write_json

# Only these ops get Q/DQ (their activations, per-channel weights). Everything else — the tinyvim
# scan and Laplace ops (and their function bodies), Softmax, LayerNorm, GELU, Einsum projections,
# element-wise arithmetic — stays float.
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MatMul")
METHODS = ("minmax", "entropy", "percentile")
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class RangesKey:
    model_sha256: str
    calibration_sha256: str
    method: str


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise CalibrationError(f"Unknown calibration method {method!r}: choose {', '.join(METHODS)}.")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


class _Reader:
    """onnxruntime CalibrationDataReader over a CalibrationSet (with the range protocol for strides)."""

    def __init__(self, input_name: str, data: CalibrationSet, progress: Callable[[int, int], None] | None):
        self.input_name, self.data, self.progress = input_name, data, progress
        self.start, self.end, self.pos, self.done = 0, len(data), 0, 0

    def __len__(self) -> int:
        return len(self.data)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, end_index, start_index

    def get_next(self):
        if self.pos >= self.end:
            return None
        x = self.data.tensors[self.pos : self.pos + 1]
        self.pos += 1
        self.done += 1
        if self.progress:
            self.progress(self.done, len(self.data))
        return {self.input_name: x}


@contextlib.contextmanager
def quiet_ort_logging() -> Iterator[None]:
    """onnxruntime.quantization logs advice on the root logger ("consider pre-processing"): mute it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# Calibrator settings per method. Entropy searches a 512-bin histogram for the 128-bin threshold with
# the least KL divergence (TensorRT uses 2048 bins; onnxruntime's search is pure Python, and 2048
# took 55 s for TinyViM-S here against 512's few seconds). quantize_static does not pass bin counts
# through, and its 128/128 default leaves nothing to search: entropy would equal minmax.
CALIBRATOR_OPTIONS = {
    "minmax": {"symmetric": False},
    "entropy": {"symmetric": False, "num_bins": 512, "num_quantized_bins": 128},
    "percentile": {"symmetric": False, "num_bins": 2048, "percentile": 99.999},
}


def compute_ranges(float_path, data: CalibrationSet, method: str, *, progress=None, chunk: int = 32) -> dict:
    """Run onnxruntime's calibrator on the float model; return its range payload (JSON-able).

    Data is fed in chunks, so memory stays bounded however many samples there are.
    """
    import onnx
    from onnxruntime.quantization import create_calibrator
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    input_name = onnx.load(str(float_path), load_external_data=False).graph.input[0].name
    reader = _Reader(input_name, data, progress)
    with tempfile.TemporaryDirectory(prefix="tvd-ranges-") as tmp, quiet_ort_logging(), \
            contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
        calibrator = create_calibrator(
            Path(float_path), list(QUANTIZED_OP_TYPES), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=ort_method(method), extra_options=dict(CALIBRATOR_OPTIONS[method]),
        )
        for start in range(0, len(data), chunk):
            reader.set_range(start, min(start + chunk, len(data)))
            calibrator.collect_data(reader)
        payload = calibrator.compute_data().to_dict()
    payload["smooth_quant"] = False  # what onnxruntime's own cache loader expects
    return json.loads(json.dumps(payload, cls=CalibrationCacheEncoder))  # NumPy values -> plain JSON


def load_cached_ranges(path, key: RangesKey) -> dict | None:
    """The cached payload if ``path`` holds ranges for exactly this key, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if stored.get("format") != CACHE_FORMAT or stored.get("key") != dataclasses.asdict(key):
        return None
    return stored["ranges"]


def save_ranges(path, key: RangesKey, ranges: dict) -> None:
    write_json(path, {"format": CACHE_FORMAT, "key": dataclasses.asdict(key), "ranges": ranges})


def get_ranges(float_path, data: CalibrationSet, method: str, cache_path=None, *, progress=None) -> tuple[dict, bool]:
    """(ranges, cache_hit): from the cache when its key matches, else computed (and cached)."""
    key = RangesKey(file_sha256(float_path), data.sha256, method)
    if cache_path is not None:
        cached = load_cached_ranges(cache_path, key)
        if cached is not None:
            return cached, True
    ranges = compute_ranges(float_path, data, method, progress=progress)
    if cache_path is not None:
        save_ranges(cache_path, key, ranges)
    return ranges, False


def tensor_ranges(ranges: dict) -> dict[str, tuple[float, float]]:
    """{tensor name: (low, high)} from onnxruntime's payload."""
    from onnxruntime.quantization.calibrate import TensorsData

    data = TensorsData.from_dict(ranges)
    return {name: (float(np.min(r.range_value[0])), float(np.max(r.range_value[1]))) for name, r in data.items()}


def write_trt_calibration_table(ranges: dict, path, *, calibrator: str = "EntropyCalibration2") -> None:
    """TensorRT's native calibration cache: ``name: <big-endian float32 scale in hex>`` per tensor.

    Scale = max(|low|, |high|) / 127 (symmetric INT8). Use it with ONNX Runtime's TensorRT EP:
    ``trt_int8_enable=True, trt_int8_calibration_table_name=<file>, trt_int8_use_native_calibration_table=True``.
    """
    lines = [f"TRT-100000-{calibrator}"]
    for name, (low, high) in sorted(tensor_ranges(ranges).items()):
        scale = max(abs(low), abs(high)) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="ascii")
