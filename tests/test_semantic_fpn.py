"""Semantic FPN neck + head against the official mmseg modules (shared/fixtures/semantic_fpn, tolerances from its
README) and the official segmentors' key manifests (shared/specs/manifests/tinyvim_{b,l}_fpn.json)."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import SHARED, need_shared
from tinyvim_deploy.models.factory import create_model
from tinyvim_deploy.models.semantic_fpn import SemanticFPNDecoder

FPN_FIXTURES = SHARED / "fixtures" / "semantic_fpn"
MANIFESTS = SHARED / "specs" / "manifests"
CASES = ["512x512", "512x704", "100x140"]
ATOL = RTOL = 1e-4  # fixture README: CPU fp32 differs from the reference by ~1e-5 (reduction order, ISA)


@cache
def manifest(variant: str) -> dict:
    return json.loads((need_shared(MANIFESTS) / f"tinyvim_{variant}_fpn.json").read_text())


def decoder_from_manifest(variant: str) -> SemanticFPNDecoder:
    neck, head = manifest(variant)["config"]["neck"], manifest(variant)["config"]["decode_head"]
    assert neck["num_outs"] == len(neck["in_channels"]) and head["in_channels"] == [neck["out_channels"]] * 4
    return SemanticFPNDecoder(
        neck["in_channels"], num_classes=head["num_classes"], neck_channels=neck["out_channels"],
        channels=head["channels"], feature_strides=head["feature_strides"], dropout_ratio=head["dropout_ratio"],
    )


@cache
def fixture_decoder() -> SemanticFPNDecoder:
    """TinyViM-B widths with the fixture's random weights, loaded strictly (floats are fp16-exact)."""
    arrays = np.load(need_shared(FPN_FIXTURES) / "state_dict_fp16.npz")
    state = {k: torch.from_numpy(v).float() if v.dtype == np.float16 else torch.from_numpy(v) for k, v in arrays.items()}
    model = decoder_from_manifest("b")
    model.load_state_dict(state, strict=True)
    return model.eval()


def fixture_features(case: str) -> list[torch.Tensor]:
    arrays = np.load(need_shared(FPN_FIXTURES) / f"in{case}.npz")
    return [torch.from_numpy(arrays[f"feat{i}"]).float() for i in range(4)]


# --------------------------------------------------------------------------------------------------
# Structure: keys, shapes, counts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["b", "l"])
def test_keys_shapes_and_counts_match_manifest(variant):
    m = manifest(variant)
    model = decoder_from_manifest(variant)
    expected = [e for e in m["keys"] if not e["key"].startswith("backbone.")]
    params = dict(model.named_parameters())
    got = [
        {"key": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
         "kind": "parameter" if k in params else "buffer"}
        for k, v in model.state_dict().items()
    ]
    assert [e["key"] for e in got] == [e["key"] for e in expected]  # same keys, same (registration) order
    assert got == [{k: e[k] for k in ("key", "shape", "dtype", "kind")} for e in expected]
    assert sum(p.numel() for p in model.neck.parameters()) == m["num_params_neck"]
    assert sum(p.numel() for p in model.decode_head.parameters()) == m["num_params_decode_head"]
    assert len(model.neck.state_dict()) == m["num_state_entries_neck"]
    assert len(model.decode_head.state_dict()) == m["num_state_entries_decode_head"]
    assert isinstance(model.decode_head.dropout, nn.Dropout2d) and model.decode_head.dropout.p == 0.1


@pytest.mark.parametrize("variant", ["b", "l"])
def test_full_segmentor_state_dict_matches_manifest(variant):
    """Our dense backbone + this decoder under backbone/neck/decode_head = the official segmentor's keys."""
    m = manifest(variant)
    backbone = create_model(f"tinyvim-{variant}", features_only=True)
    decoder = decoder_from_manifest(variant)
    assert list(backbone.embed_dims) == m["config"]["neck"]["in_channels"]
    segmentor = nn.Module()
    segmentor.backbone, segmentor.neck, segmentor.decode_head = backbone, decoder.neck, decoder.decode_head
    state = segmentor.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in m["keys"]]
    assert len(state) == m["num_state_entries"]
    assert sum(p.numel() for p in segmentor.parameters()) == m["num_params"]


def test_backbone_to_logits_shapes():
    """TinyViM-B features → stride-4 logits; eval mode is deterministic (Dropout2d inactive)."""
    backbone = create_model("tinyvim-b", features_only=True)
    decoder = decoder_from_manifest("b").eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 32, 64))
        logits = decoder(feats)
        assert torch.equal(logits, decoder(feats))
    assert logits.shape == (1, 150, 8, 16)


def test_wrong_number_of_features_raises():
    decoder = decoder_from_manifest("b")
    with pytest.raises(ValueError, match="expects 4 feature maps"):
        decoder([torch.zeros(1, 48, 8, 8)] * 3)


# --------------------------------------------------------------------------------------------------
# Numerics against the official modules
# --------------------------------------------------------------------------------------------------


@cache
def fixture_run(case: str) -> dict[str, np.ndarray]:
    """One forward pass per case; returns the logits and the stages named as in intermediates.json."""
    model = fixture_decoder()
    got: dict[str, torch.Tensor] = {}

    def keep(name: str, use_input: bool = False):
        def hook(module, args, output):
            got[name] = args[0] if use_input else output
        return hook

    handles = [model.neck.lateral_convs[i].register_forward_hook(keep(f"lateral{i}_conv_out")) for i in range(4)]
    handles += [model.decode_head.scale_heads[i].register_forward_hook(keep(f"scale_head{i}_out")) for i in range(4)]
    handles.append(model.decode_head.conv_seg.register_forward_hook(keep("fused_before_conv_seg", use_input=True)))
    try:
        with torch.no_grad():
            neck_out = model.neck(fixture_features(case))
            got["logits"] = model.decode_head(neck_out)
    finally:
        for handle in handles:
            handle.remove()
    got.update({f"P{i}": p for i, p in enumerate(neck_out)})
    return {k: v.numpy() for k, v in got.items()}


@pytest.mark.parametrize("case", CASES)
def test_logits_match_official(case):
    ref = np.load(need_shared(FPN_FIXTURES) / f"out{case}.npz")
    h, w = (int(v) for v in case.split("x"))
    logits = fixture_run(case)["logits"]
    assert logits.shape == (1, 150, -(-h // 4), -(-w // 4))

    sub = logits[:, :, ref["rows"]][:, :, :, ref["cols"]]
    np.testing.assert_allclose(sub, ref["logits_sub"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(logits.max(1), ref["max"], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(logits.astype(np.float64).mean((0, 2, 3)), ref["class_mean"], atol=1e-5, rtol=0)

    # Full-resolution labels. The reference's smallest top-1/top-2 gap is 1.5e-5, so a label may flip only where
    # our own gap is within the two logits' combined tolerance; no more than 0.01 % of the pixels.
    flipped = logits.argmax(1) != ref["argmax"]
    if flipped.any():
        b, y, x = np.nonzero(flipped)
        top2 = np.sort(logits[b, :, y, x], axis=1)[:, -2:]  # [n_flipped, 2]
        assert np.all(top2[:, 1] - top2[:, 0] < 2 * ATOL), "label differs at a pixel with a clear winner"
    assert flipped.mean() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_intermediates_match_official(case):
    """Laterals, neck outputs, scale-head outputs and the fused map, to locate a divergence (intermediates.json)."""
    ref = json.loads((need_shared(FPN_FIXTURES) / "intermediates.json").read_text())[case]
    got = fixture_run(case)
    assert set(got) == set(ref)
    for name, stats in ref.items():
        t = got[name].astype(np.float64)
        assert list(t.shape) == stats["shape"], name
        np.testing.assert_allclose(t.ravel()[:5], stats["first5"], atol=ATOL, rtol=RTOL, err_msg=name)
        for stat, value in (("mean", t.mean()), ("std", t.std(ddof=1)), ("min", t.min()), ("max", t.max())):
            assert value == pytest.approx(stats[stat], abs=ATOL), f"{name}.{stat}"
        assert np.abs(t).sum() == pytest.approx(stats["abs_sum"], rel=1e-6), f"{name}.abs_sum"


# --------------------------------------------------------------------------------------------------
# Export (spec §10 #1: a dynamic-shape export must stay correct at sizes other than the traced one)
# --------------------------------------------------------------------------------------------------


def _pyramid(h: int, w: int, widths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Random backbone maps with ceil-halved sizes (the odd sizes exercise the non-2× resizes)."""
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for c in widths:
        maps.append(torch.randn(1, c, h, w, generator=gen))
        h, w = -(-h // 2), -(-w // 2)
    return maps


@pytest.mark.slow
def test_dynamic_onnx_export_matches_at_other_sizes():
    ort = pytest.importorskip("onnxruntime")
    decoder = decoder_from_manifest("b").eval()
    widths = decoder.neck.in_channels
    dims = [{2: torch.export.Dim(f"h{i}", min=2, max=1024), 3: torch.export.Dim(f"w{i}", min=2, max=1024)}
            for i in range(4)]
    program = torch.onnx.export(decoder, (_pyramid(32, 32, widths),), None, dynamo=True, dynamic_shapes=(dims,),
                                optimize=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for h, w in [(32, 44), (25, 35)]:  # traced at 32×32: a frozen upsample size would give wrong logits here
        feats = _pyramid(h, w, widths, seed=h)
        (got,) = session.run(None, {n: f.numpy() for n, f in zip(names, feats)})
        with torch.no_grad():
            np.testing.assert_allclose(got, decoder(feats).numpy(), atol=ATOL, rtol=RTOL)
