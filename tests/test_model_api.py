"""Registry, spec object, input-size rule, and parameter/MAC counts against the official manifests."""

from __future__ import annotations

import json

import pytest
import torch

import tinyvim_deploy as tv
from tests.conftest import SHARED, need_shared


def test_list_models():
    assert {"tinyvim-s", "tinyvim-b", "tinyvim-l"} <= set(tv.list_models())


def test_spec_object():
    spec = tv.get_spec("tinyvim-s")
    assert spec.input_size == (3, 224, 224) and spec.interpolation == "bicubic"
    assert spec.crop_pct == 0.875  # official eval (spec §9), not timm's unused 0.9
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    names = spec.class_names
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby" and names[999] == "toilet tissue"


def test_create_model_is_eval_and_carries_spec():
    model = tv.create_model("TinyViM_S", num_classes=7)
    assert not model.training and model.spec.num_classes == 7 and model.spec.class_names[:2] == ("0", "1")


@pytest.mark.parametrize("hw", [(224, 224), (32, 32), (256, 320), (64, 96)])
def test_valid_sizes_run(hw):
    model = tv.create_model("tinyvim-s")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, *hw)).shape == (1, 1000)


@pytest.mark.parametrize(("hw", "nearest"), [((240, 240), "256x256"), ((200, 224), "192x224"), ((10, 31), "32x32")])
def test_invalid_sizes_raise_with_suggestion(hw, nearest):
    model = tv.create_model("tinyvim-s")
    with pytest.raises(tv.InputSizeError) as e:
        model(torch.zeros(1, 3, *hw))
    assert "multiples of 32" in str(e.value) and nearest in str(e.value)


def _manifest(variant: str) -> dict:
    return json.loads((need_shared(SHARED / "specs" / "manifests") / f"tinyvim_{variant}.json").read_text())


@pytest.mark.parametrize("variant", ["s", "b", "l"])
def test_state_dict_and_params_equal_manifest(variant):
    manifest = _manifest(variant)
    model = tv.create_model(f"tinyvim-{variant}")
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
    assert ours == manifest["state_dict"]  # same keys, same order, same shapes and dtypes
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]["total"] == model.spec.params
    fused = tv.reparameterize(model)
    assert [[k, list(v.shape)] for k, v in fused.state_dict().items()] == [
        [k, s] for k, s, _ in manifest["fused_state_dict_after_official_replace_batchnorm"]
    ]
    assert sum(p.numel() for p in fused.parameters()) == manifest["params"]["fused_total"]
    dense = tv.create_model(f"tinyvim-{variant}", features_only=True)
    assert [k for k in dense.state_dict() if k.startswith("norm")] == [
        f"norm{i}.{n}" for i in (0, 2, 4, 6) for n in ("weight", "bias", "running_mean", "running_var",
                                                         "num_batches_tracked")
    ]


def test_macs_equal_manifest():
    from torch.utils.flop_counter import FlopCounterMode

    model = tv.create_model("tinyvim-s")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224))
    assert counter.get_total_flops() // 2 == _manifest("s")["macs_224"]["unfused"] == model.spec.macs
