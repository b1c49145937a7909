"""tvdeploy export: parity through ORT, graph structure, metadata, determinism, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from tests.conftest import PHOTOS, TRAIN_LAYOUT, fixture_array, need_shared
from tests.micro import registered_micro
from tinyvim_deploy.errors import ExportError, ValidationError
from tinyvim_deploy.export.metadata import read_metadata
from tinyvim_deploy.export.onnx_export import export_onnx
from tinyvim_deploy.export.validate import ort_session


def _export(tmp_path, name="tinyvim-s", **kw):
    kw.setdefault("photos_dir", PHOTOS if PHOTOS.is_dir() else None)
    return export_onnx(name, output=tmp_path / f"{name}.onnx", **kw)


def tv_create(name):
    from tinyvim_deploy.models import create_model

    return create_model(name)


def _ort(path, x):
    session = ort_session(str(path))
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def micro():
    """tinyvim-micro: the export mechanics below need TinyViM's ops, not TinyViM-S's size."""
    with registered_micro() as name:
        yield name


@pytest.fixture(scope="module")
def s224(tmp_path_factory):
    need_shared()
    return _export(tmp_path_factory.mktemp("s224"), weights=TRAIN_LAYOUT)


def test_fixture_parity_224(s224):
    assert s224.report.passed and s224.report.max_abs <= 1e-4
    got = _ort(s224.path, fixture_array("input_224.npy"))
    assert np.abs(got - fixture_array("logits_224.npy")).max() <= 1e-4


def test_graph_has_custom_nodes_and_functions(s224):
    model = onnx.load(str(s224.path))
    onnx.checker.check_model(model, full_check=True)
    assert s224.custom_nodes == {"SelectiveScan": 5, "LaplaceSplit": 4, "LaplaceMerge": 4}
    assert sorted(f.name for f in model.functions) == ["LaplaceMerge", "LaplaceSplit", "SelectiveScan"]
    assert all(f.domain == "tinyvim" for f in model.functions)
    assert ("tinyvim", 1) in {(o.domain, o.version) for o in model.opset_import}
    scan = next(f for f in model.functions if f.name == "SelectiveScan")
    assert any(n.op_type == "Scan" for n in scan.node)


def test_metadata_describes_the_model(s224):
    meta = read_metadata(str(s224.path))
    assert meta["model"] == "tinyvim-s" and meta["task"] == "classification"
    assert json.loads(meta["input_size"]) == [3, 224, 224] and meta["input_layout"] == "NCHW"
    assert meta["crop_pct"] == "0.875" and meta["interpolation"] == "bicubic"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and len(json.loads(meta["class_names"])) == 1000
    assert meta["scan_impl"] == "scan" and meta["opset"] == "20" and meta["custom_ops"] == "functions"
    import hashlib

    assert meta["weights_sha256"] == hashlib.sha256(TRAIN_LAYOUT.read_bytes()).hexdigest()
    assert meta["torch_version"] and meta["toolkit_version"]


def test_fixture_parity_256x320(tmp_path):
    need_shared()
    result = _export(tmp_path, weights=TRAIN_LAYOUT, input_size="256x320", batch=2)
    got = _ort(result.path, fixture_array("input_256x320.npy"))
    assert np.abs(got - fixture_array("logits_256x320.npy")).max() <= 1e-4


@pytest.mark.parametrize("name", ["tinyvim-b", "tinyvim-l"])
def test_larger_variants_export_and_validate(tmp_path, name):
    result = _export(tmp_path, name=name, photos_dir=None)
    assert result.report.passed and result.report.max_abs <= 1e-4


def test_dynamic_batch_runs_batch_1_and_3(tmp_path, micro):
    result = _export(tmp_path, name=micro, dynamic_batch=True, photos_dir=None)
    assert [c.name for c in result.report.checks] == ["random batch 1", "random batch 3"]
    assert _ort(result.path, np.zeros((3, 3, 224, 224), np.float32)).shape == (3, 1000)


def test_512_input_scans_256_tokens(tmp_path):
    result = _export(tmp_path, input_size=512, photos_dir=None)
    assert result.report.passed
    assert _ort(result.path, np.zeros((1, 3, 512, 512), np.float32)).shape == (1, 1000)


@pytest.mark.parametrize("impl", ["unrolled", "chunked"])
def test_other_scan_lowerings_are_exact(tmp_path, impl):
    need_shared()
    result = _export(tmp_path, weights=TRAIN_LAYOUT, scan_impl=impl, photos_dir=None)
    assert read_metadata(str(result.path))["scan_impl"] == impl
    assert np.abs(_ort(result.path, fixture_array("input_224.npy")) - fixture_array("logits_224.npy")).max() <= 1e-4


def test_inlined_export_has_no_custom_domain(tmp_path):
    need_shared()
    result = _export(tmp_path, weights=TRAIN_LAYOUT, inline=True, photos_dir=None)
    model = onnx.load(str(result.path))
    assert not model.functions and all(n.domain != "tinyvim" for n in model.graph.node)
    assert "tinyvim" not in {o.domain for o in model.opset_import}
    assert np.abs(_ort(result.path, fixture_array("input_224.npy")) - fixture_array("logits_224.npy")).max() <= 1e-4


def test_export_is_deterministic(tmp_path, micro):
    import torch

    torch.manual_seed(0)
    torch.save({"model": tv_create(micro).state_dict()}, tmp_path / "w.pth")  # fixed weights, as a user exports
    a = _export(tmp_path / "a", name=micro, weights=tmp_path / "w.pth", photos_dir=None, validate=False)
    b = _export(tmp_path / "b", name=micro, weights=tmp_path / "w.pth", photos_dir=None, validate=False)
    assert a.path.read_bytes() == b.path.read_bytes()


def test_failed_validation_leaves_no_file(tmp_path, micro):
    with pytest.raises(ValidationError, match="nothing was written"):
        _export(tmp_path, name=micro, atol=0.0, photos_dir=None)
    assert os.listdir(tmp_path) == []


def test_interrupted_export_leaves_no_file(tmp_path, monkeypatch, micro):
    import tinyvim_deploy.export.onnx_export as mod

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "validate_onnx", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _export(tmp_path, name=micro, photos_dir=None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("kw", "match"), [({"opset": 12}, "Opset 12"), ({"scan_impl": "magic"}, "magic"),
                                           ({"batch": 0}, "at least 1")])
def test_bad_options_are_one_line_errors(tmp_path, kw, match):
    with pytest.raises(ExportError, match=match):
        _export(tmp_path, **kw)
