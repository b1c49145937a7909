"""INT8 accuracy on a *trained* TinyViM, end to end through the CLI, judged on held-out images.

The model is ``tinyvim-micro`` (tests/micro.py: TinyViM-S's blocks, scan and Laplace ops at toy widths),
so the training takes about a minute instead of five; benchmarks/int8_accuracy.py keeps the full
TinyViM-S evidence. A short seeded training on the synthetic shapes set (training/synthetic.py), then
`tvdeploy export --int8` (calibration folder A, its own held-out split), then `tvdeploy compare`
on folder B, generated from another seed and never seen by calibration or the budget search.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tvdeploy
from tests.micro import registered_micro
from tinyvim_deploy.training.synthetic import make_dataset, write_image_folder
from tinyvim_deploy.training.train import train_synthetic_classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro():
    with registered_micro() as name:
        yield name


@pytest.fixture(scope="module")
def trained(tmp_path_factory, micro):
    root = tmp_path_factory.mktemp("int8")
    model, history = train_synthetic_classifier(micro, per_class=100, epochs=15, size=96, seed=0, lr=5e-3)
    assert history[-1] < history[0] * 0.3  # it did learn
    torch.save({"model": model.state_dict()}, root / "shapes.pth")
    write_image_folder(root / "calib", *make_dataset(30, size=96, seed=12345))
    write_image_folder(root / "heldout", *make_dataset(30, size=96, seed=777))
    return root


def test_export_int8_keeps_accuracy_on_held_out_images(trained, micro):
    r = tvdeploy("export", "-m", micro, "-w", trained / "shapes.pth", "--input-size", "96", "-o",
                 trained / "s.onnx", "--int8", "--calib-data", trained / "calib", "--calib-samples", "200",
                 "--holdout", "100", "--min-agreement", "0.998")  # the search's target, with margin over 0.99
    assert r.returncode == 0, r.stderr
    print(r.stdout)  # the sensitivity table and the agreement, for the CI log
    for word in ("INT8 sensitivity", "held-out images", "s_int8.onnx"):
        assert word in r.stdout
    assert (trained / "s_int8.ranges.json").is_file() and (trained / "s_int8.trt_calib.cache").is_file()
    import onnx

    quantized = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(trained / "s_int8.onnx")).graph.node)
    assert quantized > 0  # the budget search did not keep every group in float: the INT8 model is INT8

    out = trained / "compare.json"
    r = tvdeploy("compare", trained / "s.onnx", trained / "s_int8.onnx", "--data", trained / "heldout", "--samples", "300",
                 "--json", out)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["n"] == 300 and result["float_accuracy"] > 0.6  # chance is 0.1: trained, or the check means nothing
    print(json.dumps(result))  # the evidence, in the CI log with -s / on failure
    assert result["top1_agreement"] >= 0.99
    assert result["accuracy_drop"] <= 1.0


def test_the_trained_model_is_the_same_for_the_same_seed():
    """The evidence must be reproducible: the seed fixes the initialisation as well as the data order."""
    runs = [train_synthetic_classifier(per_class=2, epochs=1, size=64, seed=seed)[0].state_dict() for seed in (3, 3, 4)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_int8_without_calibration_data_is_a_one_line_error(tmp_path):
    r = tvdeploy("export", "-m", "tinyvim-s", "--int8", "-o", tmp_path / "x.onnx")
    assert r.returncode == 2 and "--calib-data" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
