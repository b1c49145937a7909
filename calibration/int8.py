"""One INT8 pipeline: calibration data → cached ranges → accuracy budget → QDQ model → held-out check.

``quantize_onnx`` takes a validated float ONNX file (from ``tvdeploy export``) and writes an INT8
QDQ model beside it (atomically), plus the ranges cache and a TensorRT calibration table. The
held-out images (read from the same shuffled source, after the calibration ones) never take part
in calibration or in choosing the float groups.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from tinyvim_deploy.calibration.compare import Agreement, agreement, run_onnx
from tinyvim_deploy.calibration.data import CalibrationSet, load_calibration_set
from tinyvim_deploy.calibration.quantize import get_profile, quantizable_groups, quantize_with_ranges
from tinyvim_deploy.calibration.ranges import get_ranges, ort_method, write_trt_calibration_table
from tinyvim_deploy.calibration.sensitivity import BudgetResult, choose_float_groups
from tinyvim_deploy.errors import CalibrationError
from tinyvim_deploy.export.metadata import read_metadata, spec_from_metadata, write_metadata
from tinyvim_deploy.fileio import atomic_output
from tinyvim_deploy.tasks import get_task


@dataclasses.dataclass
class Int8Result:
    path: Path
    float_path: Path
    method: str
    profile: str
    calibration_count: int
    cache_path: Path
    cache_hit: bool
    trt_table_path: Path
    budget: BudgetResult
    holdout: Agreement | None  # None when no image was left for a held-out check
    seconds: float


def int8_paths(float_path: Path, output: Path | None) -> tuple[Path, Path, Path]:
    out = output or float_path.with_name(float_path.stem + "_int8.onnx")
    return out, out.with_suffix(".ranges.json"), out.with_suffix(".trt_calib.cache")


def quantize_onnx(
    float_path, calib_source, *, output=None, samples: int = 256, holdout: int = 256, seed: int = 0,
    method: str = "entropy", profile: str = "ort-cpu", min_agreement: float = 0.99, max_drop: float | None = 1.0,
    cache_path=None, on_step: Callable[[str], None] | None = None,
) -> Int8Result:
    t0 = time.perf_counter()
    float_path = Path(float_path)
    ort_method(method)  # refuse an unknown method before reading any data
    quant_profile = get_profile(profile)
    if not 0 < min_agreement <= 1:
        raise CalibrationError(f"--min-agreement is a fraction in (0, 1], got {min_agreement}.")
    out, default_cache, trt_table = int8_paths(float_path, Path(output) if output else None)
    cache_path = Path(cache_path) if cache_path else default_cache

    proto = onnx.load(str(float_path))
    meta = read_metadata(proto)
    spec, hw = spec_from_metadata(meta, str(float_path))
    if on_step:
        on_step("reading calibration images")
    calib = load_calibration_set(calib_source, spec, hw, samples=samples, seed=seed)
    held = _holdout(calib_source, spec, hw, holdout, seed, skip=len(calib) + len(calib.skipped))

    if on_step:
        on_step(f"ranges ({method})")
    ranges, hit = get_ranges(float_path, calib, method, cache_path)
    write_trt_calibration_table(ranges, trt_table)

    # Op types the task keeps in float whatever the budget says (a segmentor's precision-sensitive MatMul tails).
    always_float = [n.name for n in proto.graph.node if n.op_type in get_task(spec.task).int8_float_ops]
    groups = {g: [n for n in nodes if n not in always_float] for g, nodes in quantizable_groups(proto).items()}
    budget = choose_float_groups(float_path, {g: n for g, n in groups.items() if n}, ranges, method, quant_profile,
                                 calib.tensors, calib.labels, min_agreement=min_agreement, max_drop=max_drop,
                                 progress=on_step)
    excluded = [n for g in budget.groups if g.decision == "float" for n in g.nodes] + always_float
    with atomic_output(out) as tmp:
        quantize_with_ranges(float_path, tmp, ranges, method, quant_profile, nodes_to_exclude=excluded)
        quantized = onnx.load(str(tmp))
        meta.update({
            "precision": "int8",
            "quantization": json.dumps({"method": method, "profile": profile, "float_groups": budget.float_groups,
                                        "calibration_images": len(calib), "calibration_sha256": calib.sha256}),
        })
        write_metadata(quantized, meta)
        onnx.save(quantized, str(tmp))
        holdout_result = None
        if held is not None:
            if on_step:
                on_step(f"held-out check on {len(held)} images")
            holdout_result = agreement(run_onnx(float_path, held.tensors), run_onnx(tmp, held.tensors), held.labels)
    return Int8Result(out, float_path, method, profile, len(calib), cache_path, hit, trt_table, budget,
                      holdout_result, time.perf_counter() - t0)


def _holdout(source, spec, hw, count: int, seed: int, skip: int) -> CalibrationSet | None:
    if count <= 0:
        return None
    try:
        return load_calibration_set(source, spec, hw, samples=count, seed=seed, skip=skip, quiet=True)
    except CalibrationError:  # nothing left after the calibration images
        return None
