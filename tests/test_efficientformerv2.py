"""EfficientFormerV2 (CGRSeg backbone) against the spec's manifests and the official outputs.

Manifests: shared/specs/manifests/efficientformerv2_{s1,s2,l}_backbone.json. Fixtures and tolerance:
shared/fixtures/efficientformerv2/README.md (atol = rtol = 1e-4 on CPU fp32).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import SHARED, need_shared
from tinyvim_deploy.errors import InputSizeError
from tinyvim_deploy.models.efficientformerv2 import (
    VARIANTS,
    Attention4DDownsample,
    EfficientFormerV2,
    bias_index_table,
    check_input_size,
)

MANIFESTS = SHARED / "specs" / "manifests"
FIXTURES = SHARED / "fixtures" / "efficientformerv2"
WEIGHTS = FIXTURES / "effv2_s1_seed7_fp16.pth"


def _manifest(variant: str) -> dict:
    return json.loads((need_shared(MANIFESTS) / f"efficientformerv2_{variant}_backbone.json").read_text())


def _fixture_state_dict() -> dict[str, torch.Tensor]:
    sd = torch.load(need_shared(FIXTURES) / WEIGHTS.name, map_location="cpu", weights_only=True)
    # fp16-exact floats (README): casting back to fp32 is lossless; int64 tables stay as they are.
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _random_model(variant: str = "s1", seed: int = 0) -> EfficientFormerV2:
    """Eval-mode model with non-trivial biases and layer scales (the defaults would hide the attention)."""
    torch.manual_seed(seed)
    model = EfficientFormerV2(variant).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("attention_biases_seg", "layer_scale_1", "layer_scale_2")):
                p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def s1_seed7() -> EfficientFormerV2:
    """The fixture weights, loaded in the order that leaves the official module stale (§8.5 / trap 9):
    eval() and a precomputed bias *before* loading. Our load must discard that bias."""
    model = EfficientFormerV2("s1").eval()
    model.precompute_attention_biases(448, 576)
    model.load_state_dict(_fixture_state_dict(), strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["s1", "s2", "l"])
def test_state_dict_matches_manifest(variant):
    manifest = _manifest(variant)
    model = EfficientFormerV2(variant)
    model.precompute_attention_biases(512, 704)  # the precomputed biases must never reach the state_dict
    sd = model.state_dict()
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]
    want = [(e["key"], e["shape"], e["dtype"]) for e in manifest["keys"]]
    assert got == want  # names, shapes, dtypes and the official order
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(e["key"] for e in manifest["keys"] if e["kind"] == "parameter")
    n_params = sum(p.numel() for p in params.values())
    assert n_params == manifest["num_params"] == VARIANTS[variant].params
    assert sum(p.numel() for k, p in params.items() if k.endswith("attention_biases_seg")) == \
        manifest["num_params_attention_biases_seg"]
    assert len(sd) == manifest["num_state_entries"]
    assert sum(v.numel() for k, v in sd.items() if k not in params) == manifest["num_buffer_elements"]
    cfg = VARIANTS[variant]
    assert list(cfg.widths) == manifest["config"]["widths"] and list(cfg.depths) == manifest["config"]["depths"]
    assert cfg.vit_num == manifest["config"]["vit_num"]
    assert [list(r) for r in cfg.mlp_ratios] == manifest["config"]["e_ratios"]


@pytest.mark.parametrize("variant", ["s1", "s2", "l"])
def test_feature_shapes_and_macs_match_manifest(variant):
    manifest = _manifest(variant)
    with torch.device("meta"):  # shapes and op counts only: no memory, no compute
        model = EfficientFormerV2(variant).eval()
        for size, shapes in manifest["feature_shapes"].items():
            h, w = map(int, size.split("x"))
            with FlopCounterMode(display=False) as counter:
                feats = model(torch.empty(1, 3, h, w))
            assert [list(f.shape) for f in feats] == shapes, size
            macs = manifest.get(f"macs_{size}")
            if macs:
                counts = {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}
                assert counts == {k: v for k, v in macs.items() if k != "how"}, size


def test_index_tables_match_official_constructor():
    """The fixture carries the official constructor's tables (live 16²/32²→16², dead ImageNet 7²/14²→7²)."""
    sd = _fixture_state_dict()
    fresh = EfficientFormerV2("s1").state_dict()
    keys = [k for k in sd if "attention_bias_idxs" in k]
    assert len(keys) == 10
    for k in keys:
        assert torch.equal(fresh[k], sd[k]), k
    # closed form (§8.2): the first query row enumerates every offset in row-major order
    assert torch.equal(bias_index_table(16)[0], torch.arange(256))
    assert bias_index_table(32, 16).shape == (256, 1024)


def test_loading_a_foreign_index_table_fails_clearly():
    sd = _fixture_state_dict()
    key = "network.5.attn.attention_bias_idxs_seg"
    sd[key] = sd[key].flip(0)
    with pytest.raises(RuntimeError, match=key):
        EfficientFormerV2("s1").load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------------------------------
# Parity with the official outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, outputs", [("512", (0, 1, 2, 3)), ("448x576", (1, 2, 3))])
def test_features_match_official(s1_seed7, size, outputs):
    x = torch.from_numpy(np.load(need_shared(FIXTURES) / f"in{size}.npy")).float()
    with torch.no_grad():
        feats = s1_seed7(x)
    assert len(feats) == 4
    for i in outputs:
        ref = np.load(FIXTURES / f"out{size}_feat{i}.npy")
        assert feats[i].shape == ref.shape
        np.testing.assert_allclose(feats[i].numpy(), ref, atol=1e-4, rtol=1e-4, err_msg=f"{size} feat{i}")


def test_resized_bias_matches_official(s1_seed7):
    """The bias added at 448×576 (256→252 and 1024→1008 tokens) against the fixture's summaries."""
    summaries = json.loads((need_shared(FIXTURES) / "intermediates.json").read_text())["448x576"]
    counts = EfficientFormerV2.attention_token_counts(448, 576)
    for name, kind in [("network.4.7.token_mixer", "stage2"), ("network.5.attn", "down3"),
                       ("network.6.4.token_mixer", "stage3")]:
        ref = summaries[f"{name}.bias_added"]
        with torch.no_grad():
            bias = s1_seed7.get_submodule(name).attention_bias(*counts[kind]).double()
        assert list(bias.shape) == ref["shape"], name
        np.testing.assert_allclose(bias.flatten()[:5].numpy(), ref["first5"], atol=1e-6, err_msg=name)
        np.testing.assert_allclose(
            [bias.abs().sum().item(), bias.min().item(), bias.max().item()],
            [ref["abs_sum"], ref["min"], ref["max"]], rtol=1e-6, err_msg=name,
        )


# --------------------------------------------------------------------------------------------------
# Precomputed biases (§15): exact, used only when valid, never stale
# --------------------------------------------------------------------------------------------------


def test_precomputed_biases_are_exact_and_used():
    model = _random_model()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        runtime = model(x)
        model.precompute_attention_biases(64, 96)
        fixed = model(x)
    counts = EfficientFormerV2.attention_token_counts(64, 96)
    for _, m in model.attention_modules():
        nq, nk = counts["down3" if isinstance(m, Attention4DDownsample) else "stage3"]
        assert m.attention_bias(nq, nk) is m.fixed_bias  # the cached constant is what runs
        assert torch.equal(m.fixed_bias, m.resized_bias(nq, nk))
        assert m.attention_bias(nq + 2, nk) is not m.fixed_bias  # another size: computed at run time
    for a, b in zip(runtime, fixed):
        assert torch.equal(a, b)
    # another admissible size still runs (the cache just does not apply)
    with torch.no_grad():
        assert [f.shape[-2:] for f in model(torch.randn(1, 3, 64, 64))][-1] == (2, 2)


def test_precomputed_biases_never_go_stale():
    model = _random_model()
    model.precompute_attention_biases(64, 96)
    name, attn = model.attention_modules()[0]
    counts = EfficientFormerV2.attention_token_counts(64, 96)["stage3"]
    with torch.no_grad():  # an in-place edit of the trained table (optimizer step, manual surgery)
        attn.attention_biases_seg.add_(1.0)
    assert torch.equal(attn.attention_bias(*counts), attn.resized_bias(*counts)), name
    attn.train()
    assert attn.attention_bias(*counts) is not attn.fixed_bias  # training always computes (gradients)
    model.load_state_dict(_random_model(seed=1).state_dict())  # loading discards every precomputed bias
    assert all(m.fixed_bias is None for _, m in model.attention_modules())


def test_fixed_size_export_has_no_bias_gather_or_resize():
    model = _random_model()
    x = torch.randn(1, 3, 64, 96)
    model.precompute_attention_biases(64, 96)
    program = torch.export.export(model, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("bicubic" in op or "index.Tensor" in op for op in ops), ops
    with torch.no_grad():
        for a, b in zip(program.module()(x), model(x)):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Input sizes (§11)
# --------------------------------------------------------------------------------------------------


def test_admissible_sizes_follow_the_spec_rule():
    for side in range(1, 600):
        ok = side % 32 == 0 or side % 32 >= 17  # spec §11: H mod 32 in {0, 17..31}
        try:
            check_input_size(side, 512)
            assert ok, side
        except InputSizeError:
            assert not ok, side


def test_inadmissible_size_raises_clear_error():
    model = EfficientFormerV2("s1").eval()
    with pytest.raises(InputSizeError, match=r"512x528 .*even.* mod 32 must be 0 or 17\.\.31.*pad the input to 512x544"):
        model(torch.zeros(1, 3, 512, 528))
    with pytest.raises(ValueError):  # InputSizeError is a ValueError too
        check_input_size(500, 16)


@pytest.mark.parametrize("size", [(32, 32), (49, 81)])
def test_small_and_non_multiple_sizes_run(size):
    model = _random_model()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    h16, w16 = (-(-s // 16) for s in size)
    assert feats[2].shape[-2:] == (h16, w16) and feats[3].shape[-2:] == (h16 // 2, w16 // 2)
    assert all(torch.isfinite(f).all() for f in feats)
