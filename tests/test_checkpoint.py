"""Every checkpoint layout real files come in, and one clear typed error for every wrong file."""

from __future__ import annotations

import argparse
import pickle

import numpy as np
import pytest
import torch

import tinyvim_deploy as tv
from tests.conftest import TRAIN_LAYOUT, fixture_array
from tinyvim_deploy.models.checkpoint import load_checkpoint


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(fixture_array("input_224.npy"))).numpy()


def _save(obj, path):
    torch.save(obj, path)
    return path


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize("layout", ["raw", "model", "state_dict", "model_ema_only", "module_prefix", "train"])
def test_layouts_load_and_match(tmp_path, seed7_state_dict, layout):
    sd = seed7_state_dict
    objs = {
        "raw": sd,
        "model": {"model": sd},
        "state_dict": {"state_dict": sd, "meta": {"epoch": 3}},
        "model_ema_only": {"model_ema": sd},
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }
    path = TRAIN_LAYOUT if layout == "train" else _save(objs[layout], tmp_path / "ckpt.pth")
    model = tv.create_model("tinyvim-s", weights=path)
    assert np.abs(_logits(model) - fixture_array("logits_224.npy")).max() <= 1e-4


def test_training_layout_prefers_model_over_ema_and_says_so():
    ckpt = load_checkpoint(TRAIN_LAYOUT)
    assert ckpt.source == "model" and any("model_ema" in n for n in ckpt.notes)
    ema = load_checkpoint(TRAIN_LAYOUT, use_ema=True)
    assert ema.source == "model_ema"
    assert torch.allclose(ema.state_dict["head.bias"], ckpt.state_dict["head.bias"] + 0.5)


def test_plain_weights_only_load_refuses_namespace_but_ours_allows_it():
    with pytest.raises(pickle.UnpicklingError):
        torch.load(TRAIN_LAYOUT, weights_only=True)
    assert len(load_checkpoint(TRAIN_LAYOUT).state_dict) == 805


def test_num_classes_inferred_from_head(tmp_path, seed7_state_dict):
    sd = dict(seed7_state_dict)
    for head in ("head", "dist_head"):
        sd[f"{head}.weight"] = sd[f"{head}.weight"][:10].clone()
        sd[f"{head}.bias"] = sd[f"{head}.bias"][:10].clone()
    model = tv.create_model("tinyvim-s", weights=_save({"model": sd}, tmp_path / "ft.pth"))
    assert model.spec.num_classes == 10 and model.head.out_features == 10
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(tv.CheckpointError, match="10-class head"):
        tv.create_model("tinyvim-s", weights=tmp_path / "ft.pth", num_classes=1000)


def test_wrong_variant_names_the_fitting_one():
    with pytest.raises(tv.CheckpointError) as e:
        tv.create_model("tinyvim-b", weights=TRAIN_LAYOUT)
    assert "tinyvim-s" in _one_line(e.value)


def test_missing_and_unexpected_keys_are_counted(tmp_path, seed7_state_dict):
    sd = {k: v for k, v in seed7_state_dict.items() if not k.startswith("network.6.5.")}
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(tv.CheckpointError) as e:
        tv.create_model("tinyvim-s", weights=_save(sd, tmp_path / "partial.pth"))
    msg = _one_line(e.value)
    assert "missing keys" in msg and "unexpected keys 1 (extra.weight)" in msg and "network.6.5." in msg


def test_shape_mismatch_is_reported(tmp_path, seed7_state_dict):
    sd = dict(seed7_state_dict)
    sd["network.0.0.layer_scale"] = torch.ones(47, 1, 1)
    with pytest.raises(tv.CheckpointError) as e:
        tv.create_model("tinyvim-s", weights=_save(sd, tmp_path / "bad.pth"))
    assert "shape mismatch" in _one_line(e.value) and "network.0.0.layer_scale" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(tv.CheckpointNotFoundError) as e:
        tv.create_model("tinyvim-s", weights=tmp_path / "nope.pth")
    assert isinstance(e.value, FileNotFoundError) and "not found" in _one_line(e.value)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a checkpoint\n")
    with pytest.raises(tv.CheckpointError) as e:
        tv.create_model("tinyvim-s", weights=path)
    assert "not a PyTorch checkpoint" in _one_line(e.value)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(tv.CheckpointError, match="empty"):
        tv.create_model("tinyvim-s", weights=tmp_path / "empty.pth")


def test_truncated_file(tmp_path):
    data = TRAIN_LAYOUT.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(tv.CheckpointError) as e:
        tv.create_model("tinyvim-s", weights=tmp_path / "cut.pth")
    assert "truncated or corrupt" in _one_line(e.value)


def test_pickled_code_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": argparse.ArgumentParser}, tmp_path / "evil.pth")
    with pytest.raises(tv.CheckpointError) as e:
        tv.create_model("tinyvim-s", weights=tmp_path / "evil.pth")
    assert "refusing" in _one_line(e.value)


def test_dict_without_weights(tmp_path):
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "opt.pth")
    with pytest.raises(tv.CheckpointError, match="holds no model weights"):
        tv.create_model("tinyvim-s", weights=tmp_path / "opt.pth")


def test_errors_are_builtin_subclasses():
    assert issubclass(tv.CheckpointError, ValueError) and issubclass(tv.InputSizeError, ValueError)
    assert issubclass(tv.UnknownModelError, KeyError)
    with pytest.raises(tv.UnknownModelError, match="available: .*tinyvim-b"):
        tv.create_model("tinyvim-xl")
