"""CGRSeg head and the SSA classifier against the official fixtures (shared/fixtures/{cgrseg,ssa})."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import SHARED, need_shared
from tinyvim_deploy.models.cgrseg import HEAD_CONFIGS, CGRSegHead, CGRSegHeadConfig, adaptive_avg_pool
from tinyvim_deploy.models.ssa import drop_training_only

CGRSEG = SHARED / "fixtures" / "cgrseg"
SSA = SHARED / "fixtures" / "ssa"
MANIFESTS = SHARED / "specs" / "manifests"
FIXTURE_CONFIG = CGRSegHeadConfig(in_channels=(64, 168, 224))  # the CGRSeg-T head on TinyViM-S widths
BACKBONE_WIDTHS = {"t": (48, 120, 224), "b": (64, 144, 288), "l": (80, 192, 384)}  # EfficientFormerV2 S1/S2/L


def _manifest(name: str) -> dict:
    return json.loads((need_shared(MANIFESTS) / name).read_text())


def _fp32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _feats(case: str) -> list[torch.Tensor]:
    return [torch.zeros(1)] + [torch.from_numpy(np.load(CGRSEG / f"in{case}_feat{i}.npy")) for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def head_state() -> dict:
    return torch.load(need_shared(CGRSEG) / "head_state_dict_fp16.pth", weights_only=True)


def test_keys_shapes_and_parameter_counts_match_the_manifests():
    manifest = _manifest("cgrseg_head.json")
    head = CGRSegHead(FIXTURE_CONFIG)
    state = head.state_dict()
    assert [k["key"] for k in manifest["keys"]] == list(state)  # official registration order too
    assert all(list(state[k["key"]].shape) == k["shape"] for k in manifest["keys"])
    assert sum(p.numel() for p in head.parameters()) == manifest["num_params"] == 4_804_959
    counts = dict(manifest["param_counts_other_configs"])
    ssa_counts = dict(_manifest("ssa_head.json")["param_counts_other_configs"])
    for variant, label in (("t", "T(EffFormerV2-S1)"), ("b", "B(EffFormerV2-S2)"), ("l", "L(EffFormerV2-L)")):
        config = CGRSegHeadConfig(in_channels=BACKBONE_WIDTHS[variant], **HEAD_CONFIGS[variant])
        assert sum(p.numel() for p in CGRSegHead(config).parameters()) == counts[label]["cgrseg_head"]
        ssa_params = sum(p.numel() for p in CGRSegHead(config, classifier="ssa").parameters())
        assert ssa_params == ssa_counts[label]["cgrseg_ssa_inference_only"]


@pytest.mark.parametrize("case", ["512", "224x288"])  # 224x288: non-exact adaptive pooling at every level
def test_cgrseg_head_reproduces_the_official_logits(head_state, case):
    head = CGRSegHead(FIXTURE_CONFIG).eval()
    head.load_state_dict(_fp32(head_state), strict=True)
    with torch.no_grad():
        out = head(_feats(case)).numpy()
    np.testing.assert_allclose(out, np.load(CGRSEG / f"out{case}_logits.npy"), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def ssa_head(head_state):
    official = {k: v for k, v in head_state.items() if not k.startswith("lgc.")}
    official.update(torch.load(need_shared(SSA) / "ssa_extra_state_dict.pth", weights_only=True))
    assert set(official) == {k["key"] for k in _manifest("ssa_head.json")["keys"]}
    kept, dropped = drop_training_only(official)
    assert sorted(dropped) == sorted([
        "gt_center_content_proj.0.weight", "gt_center_content_proj.2.weight", "gt_center_content_proj.2.bias",
        "gt_center_pos_proj.0.weight", "gt_center_pos_proj.2.weight", "gt_center_pos_proj.2.bias",
        "gt_center_proj.weight", "ssa_loss.criterion.empty_weight"])
    head = CGRSegHead(FIXTURE_CONFIG, classifier="ssa").eval()
    head.load_state_dict(_fp32(kept), strict=True)
    assert not hasattr(head, "lgc")
    return head


@pytest.mark.parametrize("case", ["512", "224x288"])
def test_ssa_head_reproduces_the_official_logits(ssa_head, case):
    with torch.no_grad():
        out = ssa_head(_feats(case)).numpy()
    np.testing.assert_allclose(out, np.load(SSA / f"out{case}_logits.npy"), atol=1e-4, rtol=1e-4)
    assert np.abs(out).max() <= 15.0  # cosine logits, scale 15


def test_ssa_classifier_alone_from_the_fused_features(ssa_head):
    from tinyvim_deploy.models.ssa import ssa_logits

    fused = torch.from_numpy(np.load(SSA / "in512_feat_c.npy"))
    with torch.no_grad():
        out = ssa_logits(ssa_head, fused, ssa_head.conv_seg(fused)).numpy()
    np.testing.assert_allclose(out, np.load(SSA / "out512_logits.npy"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size, out", [((16, 16), (8, 8)), ((7, 9), (4, 5)), ((23, 12), (12, 6)), ((5, 5), (3, 3))])
def test_adaptive_pooling_equivalent(size, out):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool(x, out), torch.nn.functional.adaptive_avg_pool2d(x, out))
