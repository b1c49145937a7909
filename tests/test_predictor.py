"""Predictor on real photos: ONNX and torch backends agree; results are typed; bad files are typed errors."""

from __future__ import annotations

import numpy as np
import pytest

import tinyvim_deploy as tv
from tests.conftest import PHOTOS, TRAIN_LAYOUT, need_shared


@pytest.fixture(scope="module")
def onnx_path(seed7_onnx):
    return seed7_onnx


def test_onnx_and_torch_agree_on_every_photo(onnx_path):
    from tinyvim_deploy.images import load_image

    # Decode once and feed both backends the same pixels (the fixture's logits are close together).
    photos = [load_image(p) for p in sorted(need_shared(PHOTOS).iterdir())]
    a = tv.Predictor(onnx_path)(photos)
    b = tv.Predictor("tinyvim-s", weights=TRAIN_LAYOUT)(photos)
    assert len(a) == len(b) == len(photos)
    for ra, rb in zip(a, b):
        assert isinstance(ra, tv.ClassificationResult)
        assert ra.indices == rb.indices and len(ra.indices) == 5
        assert np.abs(ra.logits - rb.logits).max() <= 1e-4
        assert ra.labels[0] == tv.get_spec("tinyvim-s").class_names[ra.indices[0]]
        # top-5 softmax probabilities: a part of a distribution, ranked
        assert 0 < sum(ra.scores) <= 1 + 1e-6 and ra.scores == sorted(ra.scores, reverse=True)
    everything = tv.Predictor(onnx_path, topk=1000)(photos[0])  # every class: a whole distribution
    assert len(everything.scores) == 1000 and abs(sum(everything.scores) - 1) <= 1e-5
    assert everything.scores == sorted(everything.scores, reverse=True)


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


def test_a_fine_tuned_head_gets_index_labels_unless_a_labels_file_is_given(tmp_path):
    import torch

    model = tv.create_model("tinyvim-s", num_classes=10)
    torch.save({"model": model.state_dict()}, tmp_path / "ft.pth")
    rgb = np.random.default_rng(1).integers(0, 255, (240, 260, 3), dtype=np.uint8)
    p = tv.Predictor("tinyvim-s", weights=tmp_path / "ft.pth", topk=3)
    assert p.spec.num_classes == 10 and set(p(rgb).labels) <= {str(i) for i in range(10)}
    (tmp_path / "labels.txt").write_text("\n".join(f"part-{i}" for i in range(10)))
    named = tv.Predictor("tinyvim-s", weights=tmp_path / "ft.pth", labels=tmp_path / "labels.txt", topk=3)(rgb)
    assert named.labels == [f"part-{i}" for i in named.indices] and len(named.indices) == 3


def test_a_labels_file_of_the_wrong_length_is_refused(tmp_path, onnx_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(tv.ArtifactError, match="2 names"):
        tv.Predictor(onnx_path, labels=tmp_path / "labels.txt")


def test_result_repr_shows_the_top_classes_not_every_logit():
    import numpy as np

    from tinyvim_deploy.predictor import ClassificationResult

    r = ClassificationResult([3, 1, 0, 2, 4], ["d", "b", "a", "c", "e"], [0.5, 0.2, 0.1, 0.1, 0.05],
                             np.arange(1000, dtype=np.float32), "cat.jpg")
    text = repr(r)
    assert text == "ClassificationResult('cat.jpg', top-5: {'d': 0.500, 'b': 0.200, 'a': 0.100, … 2 more})"
