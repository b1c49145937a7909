"""export/options.py: which flags apply to which target, and how they settle (fast: nothing is exported)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.options import (
    CalibMethod,
    ExportOptions,
    Int8Profile,
    NMSKind,
    ScanImpl,
    Target,
    TensorRTPrecision,
)

CALIB = Path("calib")


def resolve(task: str = "classification", **values) -> ExportOptions:
    return ExportOptions.resolve(values, task=task)


def test_defaults_are_the_commands_defaults():
    opts = resolve()
    assert opts.target is Target.onnx and opts.batch == 1 and opts.opset == 20 and opts.scan_impl is ScanImpl.scan
    assert not opts.int8 and opts.nms is None and opts.int8_profile is Int8Profile.ort_cpu


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"int8": True, "calib_data": CALIB}, "--int8 does not apply to --target coreml"),
        ({"batch": 4}, "--batch does not apply to --target coreml: it is for --target onnx or --target trt"),
        ({"opset": 17}, "--opset"),
        ({"scan_impl": "unrolled"}, "--scan-impl"),
        ({"dynamic_batch": True}, "--dynamic-batch"),
        ({"precision": "int8"}, "--precision does not apply to --target coreml: it is for --target trt"),
        ({"strongly_typed": False}, "--no-strongly-typed"),
        ({"plugin_lib": [Path("x.so")]}, "--plugin-lib"),
    ],
)
def test_coreml_refuses_what_it_would_ignore(values, needle):
    with pytest.raises(ExportError, match=needle.replace("-", r"\-")):
        resolve(target="coreml", **values)


@pytest.mark.parametrize("flag", ["coreml_precision", "int8_weights", "w8a8", "coreml_fp16_scan"])
def test_onnx_and_trt_refuse_core_ml_flags(flag):
    value = "fp32" if flag == "coreml_precision" else True
    for target in ("onnx", "trt"):
        with pytest.raises(ExportError, match="is for --target coreml"):
            resolve(target=target, **{flag: value})


def test_only_flags_the_user_set_count():
    # The command line passes every value; only `given` may be refused. A default never is.
    values = {**{f: getattr(ExportOptions(), f) for f in ("batch", "opset", "precision")}, "target": "coreml"}
    assert ExportOptions.resolve(values, task="classification", given={"target"}).target is Target.coreml
    with pytest.raises(ExportError, match="--opset"):
        ExportOptions.resolve(values, task="classification", given={"target", "opset"})


def test_trt_int8_is_precision_int8_with_tensorrt_placement():
    for values in ({"int8": True}, {"precision": "int8"}):
        opts = resolve(target="trt", calib_data=CALIB, **values)
        assert opts.int8 and opts.precision is TensorRTPrecision.int8 and opts.int8_profile is Int8Profile.tensorrt
    plain = resolve(target="trt")
    assert not plain.int8 and plain.precision is TensorRTPrecision.fp16
    with pytest.raises(ExportError, match="disagree"):
        resolve(target="trt", int8=True, precision="fp16", calib_data=CALIB)
    with pytest.raises(ExportError, match="--int8-profile does not apply to --target trt"):
        resolve(target="trt", int8=True, calib_data=CALIB, int8_profile="ort-cpu")


def test_int8_needs_calibration_data_and_tuning_needs_int8():
    with pytest.raises(ExportError, match="--int8 needs calibration images"):
        resolve(int8=True)
    with pytest.raises(ExportError, match="--precision int8 needs calibration images"):
        resolve(target="trt", precision="int8")
    for flag, value in (("holdout", 10), ("calib_method", "minmax"), ("min_agreement", 0.9), ("calib_data", CALIB)):
        with pytest.raises(ExportError, match="add --int8"):
            resolve(**{flag: value})
    assert resolve(int8=True, calib_data=CALIB, calib_method="minmax").calib_method is CalibMethod.minmax
    assert resolve(target="coreml", w8a8=True, calib_data=CALIB).w8a8  # Core ML calibrates for --w8a8
    with pytest.raises(ExportError, match="add --w8a8"):
        resolve(target="coreml", calib_data=CALIB)


def test_detectors_nms_follows_the_target():
    assert resolve("detection").nms is NMSKind.onnx
    assert resolve("detection", target="trt").nms is NMSKind.efficient_nms
    assert resolve("detection", target="trt", nms="none").nms is NMSKind.none
    assert resolve("detection", target="coreml").nms is None  # Core ML appends its own NMS model
    with pytest.raises(ExportError, match="--nms efficient-nms"):
        resolve("detection", target="trt", nms="onnx")
    with pytest.raises(ExportError, match="INT8 export of detectors"):
        resolve("detection", int8=True, calib_data=CALIB)
    for flag in ("nms", "score_threshold", "max_det"):
        with pytest.raises(ExportError, match="is for detectors; tinyvim-s is a classification model"):
            resolve(**{flag: "none" if flag == "nms" else 1})


def test_strings_become_enum_members_and_bad_ones_are_one_line_errors():
    assert resolve(target="TRT").target is Target.trt
    with pytest.raises(ExportError, match="Unknown --target 'tpu': choose onnx, trt, coreml"):
        resolve(target="tpu")
    with pytest.raises(TypeError, match="bogus"):
        resolve(bogus=1)


def test_tensorrt_build_options():
    static = resolve(target="trt", batch=2).tensorrt_build_options()
    assert (static.profile.min, static.profile.max, static.precision) == (2, 2, "fp16")
    dynamic = resolve(target="trt", dynamic_batch=True, batch_profile="1,4,8", no_gpu_fallback=True)
    options = dynamic.tensorrt_build_options()
    assert (options.profile.opt, options.gpu_fallback) == (4, False)


def test_choices_match_the_libraries():
    from tinyvim_deploy.calibration.quantize import PROFILES
    from tinyvim_deploy.calibration.ranges import METHODS
    from tinyvim_deploy.cli.train import TrainMethod
    from tinyvim_deploy.export.onnx_export import NMS_KINDS
    from tinyvim_deploy.export.ops import SCAN_IMPLS
    from tinyvim_deploy.training.detect import METHODS as TRAIN_METHODS

    assert tuple(m.value for m in ScanImpl) == SCAN_IMPLS
    assert tuple(m.value for m in NMSKind) == NMS_KINDS
    assert {m.value for m in CalibMethod} == set(METHODS)
    assert {m.value for m in Int8Profile} == set(PROFILES)
    assert {m.value for m in TrainMethod} == set(TRAIN_METHODS)
