"""Predictor on real photos: ONNX and torch backends agree; results are typed; bad files are typed errors."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvim_deploy as tv
from tests.conftest import PHOTOS, TRAIN_LAYOUT, need_shared
from tinyvim_deploy.export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    need_shared()
    return export_onnx("tinyvim-s", weights=TRAIN_LAYOUT, output=tmp_path_factory.mktemp("p") / "s.onnx",
                       photos_dir=None).path


def test_onnx_and_torch_agree_on_every_photo(onnx_path):
    from tinyvim_deploy.images import load_image

    # Decode once and feed both backends the same pixels: OpenCV's float64-TIFF decoder is not
    # deterministic in its last bits (multipage_rgb.tif), and the fixture's logits are close together.
    photos = [load_image(p) for p in sorted(need_shared(PHOTOS).iterdir())]
    a = tv.Predictor(onnx_path)(photos)
    b = tv.Predictor("tinyvim-s", weights=TRAIN_LAYOUT)(photos)
    assert len(a) == len(b) == len(photos)
    for ra, rb in zip(a, b):
        assert isinstance(ra, tv.ClassificationResult)
        assert ra.indices == rb.indices and len(ra.indices) == 5
        assert np.abs(ra.logits - rb.logits).max() <= 1e-4
        assert ra.labels[0] == tv.get_spec("tinyvim-s").class_names[ra.indices[0]]
        assert abs(sum(ra.scores) - 1) < 1 and ra.scores == sorted(ra.scores, reverse=True)


def test_single_input_gives_single_result_and_bgr_is_honoured(onnx_path):
    p = tv.Predictor(onnx_path)
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    one = p(rgb)
    assert isinstance(one, tv.ClassificationResult)
    assert p(rgb[:, :, ::-1].copy(), color="bgr").indices == one.indices


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_bad_files_are_typed_errors(tmp_path, onnx_path, content):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(tv.ImageError) as e:
        tv.Predictor(onnx_path)(str(path))
    assert "bad.jpg" in str(e.value)


def test_heavy_runtimes_not_imported():
    import subprocess
    import sys

    code = ("import sys, tinyvim_deploy; "
            "print(sorted(m for m in ('tensorrt', 'coremltools', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
