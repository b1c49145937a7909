"""TinyViM-S against outputs of the official code (shared/fixtures/tinyvim, tolerances from its README)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tinyvim_deploy as tv
from tests.conftest import TINYVIM_FIXTURES, fixture_array, need_shared


def _run(model, x: np.ndarray):
    with torch.no_grad():
        return model(torch.from_numpy(x))


@pytest.mark.parametrize("size", ["224", "256x320"])
def test_logits_match_official(seed7_model, size):
    got = _run(seed7_model, fixture_array(f"input_{size}.npy")).numpy()
    ref = fixture_array(f"logits_{size}.npy")
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("size", ["224", "256x320"])
def test_reparameterized_logits_match_official(seed7_model, size):
    fused = tv.reparameterize(seed7_model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.network.modules())
    x = fixture_array(f"input_{size}.npy")
    got = _run(fused, x).numpy()
    assert np.abs(got - fixture_array(f"logits_{size}_fused.npy")).max() <= 1e-4
    assert np.abs(got - _run(seed7_model, x).numpy()).max() <= 1e-4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in seed7_model.modules()), "original left unfused"


def test_stage_outputs_match_official(seed7_model):
    stages = np.load(need_shared() / "stages_224.npz")
    x = torch.from_numpy(fixture_array("input_224.npy"))
    with torch.no_grad():
        y = seed7_model.patch_embed(x)
        np.testing.assert_allclose(y.numpy(), stages["patch_embed"], atol=2e-4, rtol=1e-4)
        for i, layer in enumerate(seed7_model.network):
            y = layer(y)
            np.testing.assert_allclose(y.numpy(), stages[f"network.{i}"], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("pnorm", [False, True])
def test_dense_backbone_features_match_official(pnorm):
    from tests.conftest import TRAIN_LAYOUT

    backbone = tv.create_model("tinyvim-s", weights=TRAIN_LAYOUT, features_only=True)
    if pnorm:
        norms = torch.load(TINYVIM_FIXTURES / "tinyvim_s_seed7_dense_norms.pth", weights_only=True)
        backbone.load_state_dict(norms, strict=False)
    feats = _run(backbone, fixture_array("input_224.npy"))
    assert len(feats) == 4
    for i, f in enumerate(feats):
        ref = fixture_array(f"features_224_{'pnorm_' if pnorm else ''}{i}.npy")
        np.testing.assert_allclose(f.numpy(), ref, atol=2e-4)


@pytest.mark.parametrize("module", ["network.0.2.op", "network.4.4.op", "network.6.5.op"])
def test_single_laplace_mixer_matches_official(seed7_model, module):
    cases = np.load(need_shared() / "ss2d_cases.npz")
    mixer = seed7_model.get_submodule(module)
    with torch.no_grad():
        out = mixer(torch.from_numpy(cases[f"{module}/input"]))
    np.testing.assert_allclose(out.numpy(), cases[f"{module}/output"], atol=1e-5)


def test_batch_samples_are_independent(seed7_model):
    x = torch.from_numpy(fixture_array("input_256x320.npy"))
    with torch.no_grad():
        both = seed7_model(x)
        one = seed7_model(x[1:])
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_train_mode_returns_both_heads():
    model = tv.create_model("tinyvim-s").train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == (2, 1000)
