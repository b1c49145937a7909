"""Core ML export (coremltools; conversion runs on Linux, prediction needs macOS)."""

from __future__ import annotations

import sys

import pytest

import tinyvim_deploy as tv
from tests.conftest import TRAIN_LAYOUT, need_shared, tvdeploy

ct = pytest.importorskip("coremltools", reason="coremltools not installed (pip install '.[coreml]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    from tinyvim_deploy.export.coreml_export import export_coreml

    need_shared()
    root = tmp_path_factory.mktemp("coreml")
    return {
        "fp16": export_coreml("tinyvim-s", weights=TRAIN_LAYOUT, output=root / "s_fp16.mlpackage"),
        "w8": export_coreml("tinyvim-s", weights=TRAIN_LAYOUT, output=root / "s_w8.mlpackage", weights_int8=True),
        "fp16_all": export_coreml("tinyvim-s", weights=TRAIN_LAYOUT, output=root / "s_all.mlpackage", scan_fp32=False),
    }


def test_package_is_an_image_classifier_with_labels_and_metadata(packages):
    spec = ct.models.MLModel(str(packages["fp16"].path), skip_model_load=True).get_spec()
    (image,) = spec.description.input
    assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (224, 224)
    assert spec.description.predictedFeatureName == "classLabel"
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs"]
    assert packages["fp16"].op_counts.get("classify") == 1  # the ClassifierConfig's labels live in this op
    user = dict(spec.description.metadata.userDefined)
    assert user["tinyvim_deploy.model"] == "tinyvim-s" and user["tinyvim_deploy.crop_pct"] == "0.875"
    assert spec.description.metadata.author == "tinyvim-deploy" and spec.description.metadata.versionString


def test_normalisation_folding_is_exact_and_no_cpu_only_ops(packages):
    for result in packages.values():
        assert result.fold_max_abs_diff < 1e-4
        assert result.flagged_ops == {}  # no scatter/gather_nd/while_loop: nothing that pins the ANE to CPU
        assert result.op_counts["conv"] == 88 and "layer_norm" in result.op_counts


def test_int8_weights_halve_the_package(packages):
    dequant = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
    int8_tensors = sum(packages["w8"].op_counts.get(op, 0) for op in dequant)
    assert sum(packages["fp16"].op_counts.get(op, 0) for op in dequant) == 0
    assert int8_tensors >= 60  # the conv/linear weights (coremltools skips tensors under 2048 elements)
    # fp16 weights are 2 bytes, int8 ones 1 byte: the package halves, give or take scales and small tensors
    assert packages["w8"].size_mb < 0.6 * packages["fp16"].size_mb


def test_fp16_program_keeps_exactly_the_scan_in_fp32(packages):
    assert packages["fp16_all"].fp32_ops == {}
    fp32 = packages["fp16"].fp32_ops
    # 5 Mamba blocks: softplus(Δ) and exp(Δ·A) once each, the recurrence's mul/add, the C-contraction's sum
    assert fp32["softplus"] == 5 and fp32["exp"] == 5 and fp32["reduce_sum"] == 5
    assert "conv" not in fp32 and "layer_norm" not in fp32 and "linear" not in fp32
    # the unrolled recurrence is many small ops (467 of 882 at 224), but none of the heavy ones above
    assert fp32["mul"] > 50 and sum(fp32.values()) < 0.6 * sum(packages["fp16"].op_counts.values())


def test_segmentor_package_outputs_logits(tmp_path):
    from tinyvim_deploy.export.coreml_export import export_coreml

    result = export_coreml("cgrseg-t", output=tmp_path / "cgrseg_t.mlpackage")
    spec = ct.models.MLModel(str(result.path), skip_model_load=True).get_spec()
    assert [(o.name, o.type.WhichOneof("Type")) for o in spec.description.output] == [("logits", "multiArrayType")]
    (image,) = spec.description.input
    assert (image.type.imageType.width, image.type.imageType.height) == (512, 512)
    user = dict(spec.description.metadata.userDefined)
    assert user["tinyvim_deploy.task"] == "segmentation" and user["tinyvim_deploy.output_stride"] == "8"
    assert result.flagged_ops == {} and result.fold_max_abs_diff < 1e-4 and "classify" not in result.op_counts
    # the prototype tail (softmax over positions and classes, the two prototype matmuls) stays FP32
    assert result.fp32_ops["softmax"] == 2 and result.fp32_ops["matmul"] == 2 and "conv" not in result.fp32_ops


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS can calibrate")
def test_w8a8_needs_macos_and_calibration_data(tmp_path):
    r = tvdeploy("export", "--model", "tinyvim-s", "--target", "coreml", "--w8a8", "--calib-data", tmp_path,
                 "-o", tmp_path / "s.mlpackage")
    assert r.returncode == 2 and "needs macOS" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = tvdeploy("export", "--model", "tinyvim-s", "--target", "coreml", "--w8a8", "-o", tmp_path / "s.mlpackage")
    assert r.returncode == 2 and "--calib-data" in r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS can predict")
def test_predicting_on_linux_is_a_clear_error(packages):
    with pytest.raises(tv.BackendUnavailableError, match="macOS"):
        tv.Predictor(packages["fp16"].path)


def test_cli_targets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed (Jetson/GPU hosts have it)
    r = tvdeploy("export", "--model", "tinyvim-s", "--target", "trt", "-o", tmp_path / "s.engine")
    assert r.returncode == 2 and "TensorRT is not installed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
    r = tvdeploy("export", "--model", "tinyvim-s", "--target", "coreml", "--coreml-precision", "fp32",
                 "-o", tmp_path / "s.mlpackage")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.mlpackage" / "Manifest.json").is_file() and "fp32" in r.stdout


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS can run the Core ML row")
def test_compare_lists_coreml_with_its_size_and_why_it_cannot_run_here(tmp_path):
    import json

    r = tvdeploy("bench", "tinyvim-s", "--compare", "onnx,coreml", "-n", "2", "--warmup", "0", "--export-dir", tmp_path,
                 "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    rows = {row["format"]: row for row in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["max_abs_diff"] < 1e-4  # same random weights for all
    assert rows["coreml"]["status"].startswith("unavailable") and "macOS" in rows["coreml"]["status"]
    assert 10 < rows["coreml"]["size_mb"] < 16 and "✗" in r.stdout
