"""The options of ``tvdeploy export``: their choices, which target each applies to, and how they combine.

:meth:`ExportOptions.resolve` is the one place where export flags are checked and settled:

- a flag the user typed that the chosen target (or the model's task) would ignore is refused in one line,
  rather than silently dropped (``--target coreml --batch 4``, ``--nms`` for a classifier);
- flags that depend on each other are settled explicitly: ``--target trt --int8`` means
  ``--precision int8``, a TensorRT engine always places its Q/DQ nodes for TensorRT, and a detector's NMS
  defaults to what its target runs.

Only flags the user set count (``given``), so a default never causes a refusal. This module imports
nothing heavy: the command line builds its help from these enums.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from tinyvim_deploy.errors import ExportError


class Target(str, enum.Enum):
    onnx = "onnx"
    trt = "trt"  # a TensorRT engine, built from the validated ONNX file
    coreml = "coreml"


class TensorRTPrecision(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"  # the selective scan is kept in FP32
    int8 = "int8"  # Q/DQ nodes from calibration


class NMSKind(str, enum.Enum):
    onnx = "onnx"  # a NonMaxSuppression subgraph
    efficient_nms = "efficient-nms"  # TensorRT's EfficientNMS_TRT plugin
    none = "none"  # raw boxes and scores


class CalibMethod(str, enum.Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


class Int8Profile(str, enum.Enum):
    ort_cpu = "ort-cpu"
    tensorrt = "tensorrt"


class CoreMLPrecision(str, enum.Enum):
    fp16 = "fp16"
    fp32 = "fp32"


class ScanImpl(str, enum.Enum):
    scan = "scan"
    unrolled = "unrolled"
    chunked = "chunked"


ALL_TARGETS = frozenset(Target)
ONNX_GRAPH = frozenset({Target.onnx, Target.trt})  # flags of the ONNX file, which a TensorRT engine is built from

# The targets each flag applies to (a flag not listed applies to every target).
TARGETS_OF: dict[str, frozenset[Target]] = {
    **dict.fromkeys(("batch", "dynamic_batch", "opset", "no_simplify", "inline_custom_ops", "scan_impl", "atol",
                     "photos", "include_postprocess", "int8", "calib_method", "min_agreement", "max_drop", "holdout",
                     "nms"), ONNX_GRAPH),
    "int8_profile": frozenset({Target.onnx}),  # a TensorRT engine always places its Q/DQ nodes for TensorRT
    **dict.fromkeys(("precision", "batch_profile", "workspace", "timing_cache", "dla_core", "no_gpu_fallback",
                     "plugin_lib", "strongly_typed"), frozenset({Target.trt})),
    **dict.fromkeys(("coreml_precision", "int8_weights", "w8a8", "coreml_fp16_scan"), frozenset({Target.coreml})),
}
DETECTION_FLAGS = ("nms", "score_threshold", "iou_threshold", "max_det")
INT8_TUNING_FLAGS = ("calib_method", "int8_profile", "min_agreement", "max_drop", "holdout")  # need --int8
CALIBRATION_FLAGS = ("calib_data", "calib_samples")  # need --int8 (ONNX, TensorRT) or --w8a8 (Core ML)
# The command-line spelling of fields whose flag is not simply ``--field-name``.
FLAG_NAMES = {"model": "--model", "plugin_lib": "--plugin-lib", "strongly_typed": "--no-strongly-typed"}


def flag(field: str) -> str:
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Every ``tvdeploy export`` flag, by its command-line name; defaults are the command's defaults."""

    # General
    model: str = "tinyvim-s"
    weights: Path | None = None
    target: Target = Target.onnx
    output: Path | None = None
    input_size: str | None = None
    # ONNX
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = 20
    no_simplify: bool = False
    inline_custom_ops: bool = False
    scan_impl: ScanImpl = ScanImpl.scan
    atol: float = 1e-4
    photos: Path | None = None
    include_postprocess: bool = False
    # INT8 (ONNX Q/DQ; TensorRT --precision int8; Core ML --w8a8 uses the calibration images too)
    int8: bool = False
    calib_data: Path | None = None
    calib_samples: int = 256
    calib_method: CalibMethod = CalibMethod.entropy
    int8_profile: Int8Profile = Int8Profile.ort_cpu
    min_agreement: float = 0.99
    max_drop: float = 1.0
    holdout: int = 256
    # Core ML
    coreml_precision: CoreMLPrecision = CoreMLPrecision.fp16
    int8_weights: bool = False
    w8a8: bool = False
    coreml_fp16_scan: bool = False
    # TensorRT
    precision: TensorRTPrecision = TensorRTPrecision.fp16
    batch_profile: str | None = None
    workspace: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    no_gpu_fallback: bool = False
    plugin_lib: tuple[Path, ...] = ()
    strongly_typed: bool = True
    # Detection
    nms: NMSKind | None = None  # resolved from the target when not given
    score_threshold: float = 0.05
    iou_threshold: float = 0.6
    max_det: int = 100

    @classmethod
    def resolve(cls, values: Mapping[str, Any], *, task: str, given: Collection[str] | None = None) -> ExportOptions:
        """Check and settle the options of one export of a ``task`` model.

        ``values`` are flag values by field name (missing ones take the defaults); ``given`` names the flags
        the user set (default: every key of ``values``). Raises :class:`ExportError` for a flag that does not
        apply, or a combination that cannot be exported.
        """
        given = set(values if given is None else given)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"Unknown export options: {', '.join(sorted(unknown))}")
        opts = cls(**{k: _coerce(k, v) for k, v in values.items()})
        target = opts.target
        for name in sorted(given):
            targets = TARGETS_OF.get(name, ALL_TARGETS)
            if target not in targets:
                where = " or ".join(f"--target {t.value}" for t in Target if t in targets)
                raise ExportError(f"{flag(name)} does not apply to --target {target.value}: it is for {where}.")
        from tinyvim_deploy.tasks import get_task

        detector = get_task(task).has_nms
        for name in DETECTION_FLAGS:
            if name in given and not detector:
                raise ExportError(f"{flag(name)} is for detectors; {opts.model} is a {task} model.")

        precision, int8, profile = opts.precision, opts.int8, opts.int8_profile
        if target is Target.trt:
            if int8 and "precision" in given and precision is not TensorRTPrecision.int8:
                raise ExportError(f"--int8 and --precision {precision.value} disagree: for an INT8 engine pass "
                                  "--precision int8 alone.")
            precision = TensorRTPrecision.int8 if int8 else precision
            int8 = precision is TensorRTPrecision.int8
            profile = Int8Profile.tensorrt
        nms = opts.nms
        if detector:
            if int8:
                raise ExportError("INT8 export of detectors is not implemented yet: export FP32 or FP16.")
            if target is Target.trt and nms is NMSKind.onnx:
                raise ExportError("TensorRT engines of detectors run TensorRT's own NMS: use --nms efficient-nms "
                                  "(the default for --target trt) or --nms none.")
            if target is not Target.coreml:  # Core ML appends its own NonMaximumSuppression model
                nms = nms or (NMSKind.efficient_nms if target is Target.trt else NMSKind.onnx)
        int8_switch = "--precision int8" if target is Target.trt else "--int8"
        for name in INT8_TUNING_FLAGS:
            if name in given and not int8:
                raise ExportError(f"{flag(name)} tunes INT8 quantization: add {int8_switch}.")
        for name in CALIBRATION_FLAGS:
            if name in given and not (int8 or opts.w8a8):
                raise ExportError(f"{flag(name)} is for INT8: add {'--w8a8' if target is Target.coreml else int8_switch}.")
        if int8 and opts.calib_data is None:
            raise ExportError(f"{int8_switch} needs calibration images: pass --calib-data DIR (or a list file).")
        return dataclasses.replace(opts, precision=precision, int8=int8, int8_profile=profile, nms=nms)

    def nms_config(self, task: str):
        """The NMS settings of a detector (``None`` for other tasks)."""
        from tinyvim_deploy.export.nms import NMSConfig
        from tinyvim_deploy.tasks import get_task

        if not get_task(task).has_nms:
            return None

        return NMSConfig(score_threshold=self.score_threshold, iou_threshold=self.iou_threshold, max_det=self.max_det)

    def tensorrt_build_options(self):
        """The TensorRT builder's settings (``--target trt``)."""
        from tinyvim_deploy.export.tensorrt_export import BuildOptions, parse_batch_profile

        return BuildOptions(
            precision=self.precision.value,
            profile=parse_batch_profile(self.batch_profile, None if self.dynamic_batch else self.batch),
            strongly_typed=self.strongly_typed, workspace_mb=self.workspace, timing_cache=self.timing_cache,
            dla_core=self.dla_core, gpu_fallback=not self.no_gpu_fallback,
            plugin_libs=tuple(str(p) for p in self.plugin_lib),
        )


# Fields whose values are enum members; library callers may pass the plain strings (``target="trt"``).
ENUM_FIELDS: dict[str, type[enum.Enum]] = {
    "target": Target, "scan_impl": ScanImpl, "calib_method": CalibMethod, "int8_profile": Int8Profile,
    "coreml_precision": CoreMLPrecision, "precision": TensorRTPrecision, "nms": NMSKind,
}


def _coerce(name: str, value: Any) -> Any:
    """A plain string becomes its enum member, in any case; a list of plugin libraries becomes a tuple."""
    if name == "plugin_lib":
        return tuple(value)
    enum_type = ENUM_FIELDS.get(name)
    if enum_type is None or value is None or isinstance(value, enum_type):
        return value
    try:
        return enum_type(str(value).lower())
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum_type)
        raise ExportError(f"Unknown {flag(name)} {value!r}: choose {choices}.") from None
