"""INT8: calibration sources, the ranges cache rules, QDQ models per method/profile, custom ops untouched."""

from __future__ import annotations

import collections
import json
import warnings

import numpy as np
import onnx
import pytest

import tinyvim_deploy as tv
from tinyvim_deploy.calibration.compare import agreement, run_onnx
from tinyvim_deploy.calibration.data import list_images, load_calibration_set
from tinyvim_deploy.calibration.quantize import PROFILES, module_group, quantizable_groups, quantize_with_ranges
from tinyvim_deploy.calibration.ranges import METHODS, RangesKey, get_ranges, load_cached_ranges, tensor_ranges
from tinyvim_deploy.export.onnx_export import export_onnx
from tinyvim_deploy.export.tensorrt_check import check_onnx
from tinyvim_deploy.training.synthetic import CLASSES, make_dataset, write_image_folder

SPEC = tv.get_spec("tinyvim-s")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images, labels = make_dataset(3, size=96, seed=3)
    return write_image_folder(tmp_path_factory.mktemp("calib"), images, labels)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """TinyViM-S at 128×128 with seeded random weights (the tests here check mechanics, not accuracy)."""
    import torch

    torch.manual_seed(0)
    return export_onnx("tinyvim-s", output=tmp_path_factory.mktemp("q") / "s128.onnx", input_size=128,
                       photos_dir=None).path


@pytest.fixture(scope="module")
def calib(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_calibration_set(folder, SPEC, (128, 128), samples=16, seed=0)


# -- calibration data ---------------------------------------------------------------------------------

def test_image_folder_gives_sorted_class_labels(folder):
    files, labels, classes = list_images(folder)
    assert classes == list(CLASSES) and len(files) == 30
    assert all(CLASSES[label] == f.parent.name for f, label in zip(files, labels))


def test_samples_are_seeded_shuffled_and_preprocessed_like_the_predictor(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = load_calibration_set(folder, SPEC, (128, 128), samples=8, seed=1)
        b = load_calibration_set(folder, SPEC, (128, 128), samples=8, seed=1)
        c = load_calibration_set(folder, SPEC, (128, 128), samples=8, seed=2)
        rest = load_calibration_set(folder, SPEC, (128, 128), samples=None, seed=1, skip=8)
    assert a.sha256 == b.sha256 != c.sha256 and a.tensors.shape == (8, 3, 128, 128)
    assert not set(a.sources) & set(rest.sources) and len(rest) == 22  # held-out follows, no overlap
    from tinyvim_deploy.images import load_image
    from tinyvim_deploy.preprocess import preprocess

    same = preprocess([load_image(a.sources[0])], (128, 128), crop_pct=SPEC.crop_pct, mean=SPEC.mean, std=SPEC.std)
    assert np.array_equal(a.tensors[:1], same)


def test_list_file_and_arrays(folder, tmp_path):
    files, labels, _ = list_images(folder)
    (tmp_path / "list.txt").write_text("\n".join(f"{f} {label}" for f, label in zip(files[:5], labels[:5])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listed = load_calibration_set(tmp_path / "list.txt", SPEC, (128, 128), samples=None)
        images = np.random.default_rng(0).integers(0, 255, (4, 150, 200, 3), dtype=np.uint8)
        arrays = load_calibration_set(images, SPEC, (128, 128), samples=None)
    assert len(listed) == 5 and sorted(listed.labels) == sorted(labels[:5])
    assert arrays.tensors.shape == (4, 3, 128, 128) and arrays.labels is None


def test_corrupt_files_are_skipped_with_a_warning_and_few_images_warn(folder, tmp_path):
    import shutil

    root = tmp_path / "mixed"
    shutil.copytree(folder / "circle", root / "circle")
    (root / "circle" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning) as record:
        data = load_calibration_set(root, SPEC, (128, 128), samples=None)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.png" in messages and "only 3 calibration images" in messages
    assert len(data) == 3 and data.skipped == [str(root / "circle" / "broken.png")]


@pytest.mark.parametrize(("name", "needle"), [("missing", "not found"), ("", "No image files"),
                                             ("x.bin", "neither a folder")])
def test_bad_sources_are_clear_errors(tmp_path, name, needle):
    if name == "x.bin":
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(tv.CalibrationError, match=needle):
        load_calibration_set(tmp_path / name if name else tmp_path, SPEC, (128, 128))


# -- ranges cache ---------------------------------------------------------------------------------------

def test_ranges_cache_hits_only_when_model_data_and_method_all_match(small_onnx, calib, tmp_path):
    cache = tmp_path / "r.json"
    ranges, hit = get_ranges(small_onnx, calib, "minmax", cache)
    assert not hit and cache.is_file()
    assert get_ranges(small_onnx, calib, "minmax", cache) == (ranges, True)
    key = RangesKey(**json.loads(cache.read_text())["key"])
    assert load_cached_ranges(cache, key) is not None
    # any one part changed -> miss (a stale cache is never used)
    for changed in (RangesKey("0" * 64, key.calibration_sha256, key.method),
                    RangesKey(key.model_sha256, "0" * 64, key.method),
                    RangesKey(key.model_sha256, key.calibration_sha256, "percentile")):
        assert load_cached_ranges(cache, changed) is None
    _, hit = get_ranges(small_onnx, calib.subset(slice(0, 8)), "minmax", cache)  # other data: recomputed
    assert not hit and json.loads(cache.read_text())["key"]["calibration_sha256"] == calib.subset(slice(0, 8)).sha256
    cache.write_text("{broken json")
    assert get_ranges(small_onnx, calib, "minmax", cache)[1] is False


# -- QDQ models ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_each_method_gives_a_runnable_qdq_model_with_custom_ops_untouched(small_onnx, calib, tmp_path, method):
    ranges, _ = get_ranges(small_onnx, calib, method)
    lows = [lo for lo, _ in tensor_ranges(ranges).values()]
    assert len(lows) > 50
    fp = onnx.load(str(small_onnx))
    for profile in PROFILES.values():
        out = tmp_path / f"{method}-{profile.name}.onnx"
        quantize_with_ranges(small_onnx, out, ranges, method, profile)
        q = onnx.load(str(out))
        ops = collections.Counter(n.op_type for n in q.graph.node)
        assert ops["QuantizeLinear"] > 20 and ops["DequantizeLinear"] > ops["QuantizeLinear"] - 1
        for custom in ("SelectiveScan", "LaplaceSplit", "LaplaceMerge"):  # still there, still float functions
            assert ops[custom] == collections.Counter(n.op_type for n in fp.graph.node)[custom] > 0
        assert {f.name for f in q.functions} == {f.name for f in fp.functions}
        assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for f in q.functions for n in f.node)
        for keep in ("LayerNormalization", "Gelu", "Softmax", "Einsum"):  # never quantized themselves
            assert ops[keep] == collections.Counter(n.op_type for n in fp.graph.node)[keep]
        if profile.name == "tensorrt":  # symmetric: every activation zero point is 0
            zps = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer if "zero_point" in i.name}
            assert zps and all((z == 0).all() for z in zps.values())
        # TensorRT's parser takes the tensorrt profile only (it needs zero points of 0)
        assert check_onnx(q, "10.15").supported == (profile.name == "tensorrt")
        y = run_onnx(out, calib.tensors[:4])
        assert y.shape == (4, 1000) and np.isfinite(y).all()


def test_groups_follow_modules(small_onnx):
    groups = quantizable_groups(onnx.load(str(small_onnx)))
    assert module_group("network.4.2.dwconv.weight") == "network.4.2" and module_group("head.weight") == "head"
    assert module_group("backbone.network.4.2.mlp.fc1.weight") == "backbone.network.4.2"
    assert module_group("decode_head.SIM.0.fuse1.conv.weight") == "decode_head.SIM.0"
    assert "network.4.2" in groups and "head" in groups and sum(map(len, groups.values())) == 90


def test_agreement_metrics():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
    cand = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 2.0]])
    a = agreement(ref, cand, labels=np.array([0, 1, 0]))
    assert a.top1_agreement == pytest.approx(2 / 3) and a.top5_agreement == 1.0
    assert a.float_accuracy == pytest.approx(2 / 3) and a.quant_accuracy == pytest.approx(1 / 3)
    assert a.accuracy_drop == pytest.approx(100 / 3) and 0.9 < a.cosine < 1
