"""Honest latency profiling: warm-up, then N iterations or a duration, percentiles, memory.

``benchmark`` times a :class:`~tinyvim_deploy.predictor.Predictor`. Without images it times the
backend alone on a seeded batch (what a runtime costs); with images it times the whole app path and
splits it into preprocessing, inference and postprocessing. ``compare_formats`` exports what it
needs and runs the same input through every format, with size on disk and parity to PyTorch.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tinyvim_deploy.errors import TinyViMDeployError
from tinyvim_deploy.models.registry import parse_input_size

Progress = Callable[[int, "int | None"], None]  # (iterations done, total or None when timed)


@dataclasses.dataclass
class LatencyStats:
    """Latency of one timed stage over all measured iterations, in milliseconds."""

    n: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        std = statistics.stdev(ms) if len(ms) > 1 else 0.0
        return cls(len(ms), float(ms.mean()), float(std), float(ms.min()), float(p50), float(p90), float(p99),
                   float(ms.max()))


@dataclasses.dataclass
class BenchResult:
    artifact: str
    backend: str
    device: str
    batch: int
    threads: int | None
    warmup: int
    iterations: int
    load_s: float
    first_inference_ms: float
    latency: LatencyStats  # per batch, end to end when images were given
    throughput_ips: float  # images per second
    peak_rss_mb: float | None
    cuda_peak_mb: float | None = None
    stages: dict[str, LatencyStats] = dataclasses.field(default_factory=dict)  # preprocess/inference/postprocess
    mode: str = "inference"  # or "end-to-end"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB), or None where the OS does not say."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # bytes on macOS, KiB on Linux


def _check_plan(warmup: int, iterations: int | None, duration: float | None, batch: int) -> None:
    if batch < 1:
        raise TinyViMDeployError(f"Batch size must be at least 1, got {batch}.")
    if warmup < 0:
        raise TinyViMDeployError(f"Warm-up runs cannot be negative, got {warmup}.")
    if duration is not None and duration <= 0:
        raise TinyViMDeployError(f"Duration must be positive, got {duration} s.")
    if duration is None and (iterations is None or iterations < 1):
        raise TinyViMDeployError(f"Iterations must be at least 1, got {iterations}.")


def benchmark(predictor, *, batch: int = 1, warmup: int = 10, iterations: int | None = 100,
              duration: float | None = None, images: Sequence[np.ndarray] | None = None,
              progress: Progress | None = None, seed: int = 0) -> BenchResult:
    """Time ``predictor``: ``iterations`` runs, or as many as fit in ``duration`` seconds.

    ``images`` (decoded HxWx3 RGB arrays) switches to end-to-end timing: each iteration
    preprocesses ``batch`` of them (cycling), runs the backend and post-processes the output.
    """
    _check_plan(warmup, iterations, duration, batch)
    backend = predictor.backend
    end_to_end = bool(images)
    if end_to_end:
        chosen = [images[i % len(images)] for i in range(batch)]
    else:
        x = np.random.default_rng(seed).standard_normal((batch, 3, *backend.input_hw)).astype(np.float32)

    def once() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        inp, contexts = predictor.preprocess(chosen, fixed_size=True) if end_to_end else (x, None)
        t1 = time.perf_counter()
        out = backend.run(inp)
        t2 = time.perf_counter()
        if end_to_end:
            predictor.postprocess(out, contexts, ["bench"] * batch)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    backend.reset_peak_memory()
    t0 = time.perf_counter()
    once()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        once()

    stages: list[tuple[float, float, float]] = []
    deadline = time.perf_counter() + duration if duration else None
    total = None if duration else iterations
    while (len(stages) < iterations) if deadline is None else (time.perf_counter() < deadline or not stages):
        stages.append(once())
        if progress:
            progress(len(stages), total)
    totals = [sum(s) for s in stages]
    latency = LatencyStats.from_seconds(totals)
    split = {}
    if end_to_end:
        for i, name in enumerate(("preprocess", "inference", "postprocess")):
            split[name] = LatencyStats.from_seconds([s[i] for s in stages])
    return BenchResult(
        artifact=str(backend.artifact), backend=backend.describe(), device=backend.device, batch=batch,
        threads=backend.thread_count(), warmup=warmup, iterations=len(stages), load_s=backend.load_seconds,
        first_inference_ms=first * 1e3, latency=latency, throughput_ips=batch * len(totals) / sum(totals),
        peak_rss_mb=peak_rss_mb(), cuda_peak_mb=backend.peak_memory_mb(), stages=split,
        mode="end-to-end" if end_to_end else "inference",
    )


# -- compare formats (Ultralytics-style table, with percentiles and parity) -----------------------------

@dataclasses.dataclass
class FormatRow:
    format: str
    status: str  # "ok", or why the format could not run
    artifact: str = ""
    size_mb: float | None = None
    max_abs_diff: float | None = None
    top1_agree: bool | None = None
    result: BenchResult | None = None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["result"] = self.result.as_dict() if self.result else None
        return d


def _prepare_torch(model_name, weights, workdir, **_):
    return model_name, Path(weights).stat().st_size / 1e6  # compare_formats always has a weights file


def _prepare_onnx(model_name, weights, workdir, *, batch, input_size, nms="onnx", suffix="", **_):
    from tinyvim_deploy.export.onnx_export import export_onnx

    result = export_onnx(model_name, weights=weights, output=Path(workdir) / f"{model_name}{suffix}.onnx",
                         input_size=input_size, batch=batch, photos_dir=None, nms=nms)
    return str(result.path), result.path.stat().st_size / 1e6


def _prepare_coreml(model_name, weights, workdir, *, batch, input_size, **_):
    from tinyvim_deploy.export.coreml_export import export_coreml

    if batch != 1:
        raise TinyViMDeployError("Core ML packages are exported for batch 1.")
    result = export_coreml(model_name, weights=weights, output=Path(workdir) / f"{model_name}.mlpackage",
                           input_size=input_size)
    return str(result.path), result.size_mb


def _prepare_trt(model_name, weights, workdir, *, batch, input_size, **_):
    """An FP16 engine (scan in FP32) from the ONNX export, validated on this GPU by the export itself."""
    from tinyvim_deploy.export.tensorrt_export import BatchProfile, BuildOptions, export_tensorrt
    from tinyvim_deploy.export.validate import validation_inputs
    from tinyvim_deploy.models import create_model, reparameterize
    from tinyvim_deploy.runtimes.tensorrt import import_tensorrt

    import_tensorrt()  # before exporting anything: the row then says how to get TensorRT
    # detectors: TensorRT's own NMS plugin (the ONNX NMS subgraph is for ONNX Runtime)
    onnx_path, _ = _prepare_onnx(model_name, weights, workdir, batch=batch, input_size=input_size,
                                 nms="efficient-nms", suffix="_trt")
    model = reparameterize(create_model(model_name, weights=weights))
    size = model.spec.input_size[1:] if input_size is None else parse_input_size(input_size, model.spec.input_size[1:])
    result = export_tensorrt(Path(onnx_path), model, output=None, options=BuildOptions("fp16", BatchProfile(batch, batch,
                             batch)), inputs=validation_inputs(tuple(size), [batch], model.spec))
    return str(result.engine), result.engine.stat().st_size / 1e6


# format -> (backend name, preparer returning (artifact, size MB)). New formats register here and
# the compare table picks them up.
FORMATS: dict[str, tuple[str, Callable]] = {
    "torch": ("torch", _prepare_torch),
    "onnx": ("onnxruntime", _prepare_onnx),
    "coreml": ("coreml", _prepare_coreml),
    "trt": ("tensorrt", _prepare_trt),
}


def compare_formats(model_name: str, formats: Sequence[str], *, weights=None, workdir, batch: int = 1,
                    input_size=None, device: str | None = None, threads: int | None = None,
                    warmup: int = 10, iterations: int | None = 100, duration: float | None = None,
                    images: Sequence[np.ndarray] | None = None,
                    on_format: Callable[[str], Progress | None] | None = None) -> list[FormatRow]:
    """Prepare each format (exporting as needed), check it against eager PyTorch, and time it.

    Parity uses one input for all: the preprocessed ``images`` when given, else a seeded batch.
    A format that cannot run here (a missing runtime, a failed export) gets a row saying why.
    """
    import torch

    from tinyvim_deploy.models import create_model
    from tinyvim_deploy.predictor import Predictor

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise TinyViMDeployError(f"Unknown format {unknown[0]!r} for --compare: choose {', '.join(FORMATS)}.")
    os.makedirs(workdir, exist_ok=True)
    reference_model = create_model(model_name, weights=weights)  # unfused eager: the official answer
    if weights is None:  # every format must get the same (random) weights, or parity means nothing
        weights = Path(workdir) / f"{model_name}_random_init.pth"
        torch.save({"model": reference_model.state_dict()}, weights)
    rows, reference_x, reference_y = [], None, None
    for fmt in formats:
        backend_name, prepare = FORMATS[fmt]
        artifact, size_mb = "", None
        try:
            artifact, size_mb = prepare(model_name, weights, workdir, batch=batch, input_size=input_size)
            predictor = Predictor(artifact, backend=backend_name, device=device, threads=threads,
                                  weights=weights, input_size=input_size)
        except TinyViMDeployError as e:  # keep what was made (file, size) even when it cannot run here
            rows.append(FormatRow(fmt, f"unavailable: {e}", str(artifact), size_mb))
            continue
        if reference_x is None:
            if images:
                reference_x = predictor.preprocess([images[i % len(images)] for i in range(batch)], fixed_size=True)[0]
            else:
                hw = predictor.backend.input_hw
                reference_x = np.random.default_rng(0).standard_normal((batch, 3, *hw)).astype(np.float32)
            with torch.inference_mode():
                y = reference_model(torch.from_numpy(reference_x))
            reference_y = [t.numpy() for t in (y if isinstance(y, (tuple, list)) else (y,))]
        diff, same = predictor.task.parity(reference_y, predictor.backend.run(reference_x))
        result = benchmark(predictor, batch=batch, warmup=warmup, iterations=iterations, duration=duration,
                           images=images, progress=on_format(fmt) if on_format else None)
        predictor.close()
        rows.append(FormatRow(fmt, "ok", str(artifact), size_mb, diff, same, result))
    return rows
