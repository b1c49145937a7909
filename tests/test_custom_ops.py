"""Each tinyvim op: ONNX function (run by ORT) == NumPy reference == PyTorch op; schemas registered."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tests.test_scan import _case
from tinyvim_deploy.export import ops as X
from tinyvim_deploy.export.validate import ort_session
from tinyvim_deploy.models import ops as M


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    return ort_session(model.SerializeToString()).run(None, feeds)


def _scan_feeds(L: int, batch: int = 2) -> dict[str, np.ndarray]:
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    return {n: t.numpy() for n, t in zip(names, _case(L, batch=batch))}


@pytest.mark.parametrize("impl", X.SCAN_IMPLS)
@pytest.mark.parametrize("L", [1, 49, 80, 256])
def test_selective_scan_function_matches_numpy(impl, L):
    feeds = _scan_feeds(L)
    ref = X.selective_scan_np(**feeds)
    (got,) = _run(X.single_op_model("SelectiveScan", feeds, 1, scan_impl=impl), feeds)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() <= 1e-5
    torch_out = M.selective_scan(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert np.abs(torch_out - ref).max() <= 1e-5


def test_selective_scan_function_long_sequence_is_finite_and_exact():
    feeds = _scan_feeds(1024, batch=1)
    (got,) = _run(X.single_op_model("SelectiveScan", feeds, 1, scan_impl="scan"), feeds)
    assert np.isfinite(got).all() and np.abs(got - X.selective_scan_np(**feeds)).max() <= 1e-5


def test_softplus_threshold_matches_pytorch():
    feeds = _scan_feeds(49, batch=1)
    feeds["delta"] = feeds["delta"] + 100.0  # exp(z) overflows float32; PyTorch returns z above 20
    (got,) = _run(X.single_op_model("SelectiveScan", feeds, 1), feeds)
    assert np.isfinite(got).all() and np.abs(got - X.selective_scan_np(**feeds)).max() <= 1e-3


@pytest.mark.parametrize("pool", [2, 4, 8])
@pytest.mark.parametrize("hw", [(16, 24), (8, 8)])
def test_laplace_split_and_merge_match_numpy_and_torch(pool, hw):
    x = np.random.default_rng(pool).standard_normal((2, 5, *hw), dtype=np.float32)
    low, band = _run(X.single_op_model("LaplaceSplit", {"X": x}, 2, pool=pool), {"X": x})
    ref_low, ref_band = X.laplace_split_np(x, pool)
    assert np.abs(low - ref_low).max() <= 1e-6 and np.abs(band - ref_band).max() <= 1e-6
    t_low, t_band = M.laplace_split(torch.from_numpy(x), pool)
    assert np.abs(t_low.numpy() - ref_low).max() <= 1e-6 and np.abs(t_band.numpy() - ref_band).max() <= 1e-6

    low = np.random.default_rng(1).standard_normal(ref_low.shape, dtype=np.float32)
    (merged,) = _run(X.single_op_model("LaplaceMerge", {"Low": low, "Band": ref_band}, 1, pool=pool),
                     {"Low": low, "Band": ref_band})
    ref = X.laplace_merge_np(low, ref_band, pool)
    assert np.abs(merged - ref).max() <= 1e-5
    t = M.laplace_merge(torch.from_numpy(low), torch.from_numpy(ref_band), pool).numpy()
    assert np.abs(t - ref).max() <= 1e-5


def test_schemas_are_registered():
    X.register_schemas()
    X.register_schemas()  # idempotent
    for name in ("SelectiveScan", "LaplaceSplit", "LaplaceMerge"):
        assert onnx.defs.has(name, X.DOMAIN)
    assert [a for a in onnx.defs.get_schema("LaplaceSplit", 1, X.DOMAIN).attributes] == ["pool"]
