"""TensorRT: everything that does not need libnvinfer or a GPU (our CI has neither).

The graph preparation (inlining, FP16 with the scan kept FP32) runs in ONNX Runtime here; the
batch profile, build-mode rules, sidecar and version checks, and the static op checker are pure
Python. Building and running engines is only type-checked (tests/test_typing.py).
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import PHOTOS, tvdeploy
from tinyvim_deploy.errors import ArtifactError, BackendUnavailableError, ExportError
from tinyvim_deploy.export import tensorrt_export as te
from tinyvim_deploy.export.tensorrt_check import check_onnx
from tinyvim_deploy.export.validate import photo_batch
from tinyvim_deploy.runtimes import backend_for
from tinyvim_deploy.runtimes import tensorrt as rt

SIDECAR = dict(
    metadata={"model": "tinyvim-s"}, tensorrt_version="10.13.0.35", gpu_name="Orin", compute_capability="8.7",
    precision="fp16", strongly_typed=True, input_name="image", batch_profile=rt.BatchProfile(1, 4, 8),
    onnx_sha256="a" * 64, engine_sha256="b" * 64,
)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types_ = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types_.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types_


# -- preparing the graph --------------------------------------------------------------------------------

def test_fp32_preparation_inlines_the_custom_ops_exactly(seed7_onnx):
    source = onnx.load(str(seed7_onnx))
    prepared = te.prepare_onnx(source, "fp32")
    assert not any(n.domain == "tinyvim" for n in prepared.graph.node)
    assert not prepared.functions and all(o.domain != "tinyvim" for o in prepared.opset_import)
    scan_nodes = [n for n in prepared.graph.node if n.name.startswith(te.FP32_FUNCTION_PREFIX)]
    assert sum(n.op_type == "Scan" for n in scan_nodes) == 5  # one per Mamba block, still identifiable by name
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224), dtype=np.float32)
    np.testing.assert_allclose(te.run_onnx(prepared, x)[0], te.run_onnx(source, x)[0], atol=1e-5)
    assert len(source.functions) == 3  # the caller's model is left alone


def test_fp16_graph_keeps_the_scan_in_fp32_and_matches_pytorch(seed7_onnx, seed7_model):
    prepared = te.prepare_onnx(onnx.load(str(seed7_onnx)), "fp16")
    kinds = value_types(prepared)
    scans = [n for n in prepared.graph.node if n.op_type == "Scan"]
    assert len(scans) == 5 and all(kinds[i] == onnx.TensorProto.FLOAT for n in scans for i in n.input if i)
    assert all(kinds[i] == onnx.TensorProto.FLOAT for n in prepared.graph.node
               if n.op_type == "LayerNormalization" for i in n.input if i)
    convs = [n for n in prepared.graph.node if n.op_type == "Conv"]
    assert all(kinds[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)  # the bulk really is FP16
    assert prepared.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept

    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} not found: set TVD_SHARED to the shared/ folder (CI always has it)")
    x = photo_batch(PHOTOS, (224, 224), seed7_model.spec)
    from tinyvim_deploy.models import reparameterize

    with torch.no_grad():
        ref = reparameterize(seed7_model)(torch.from_numpy(x)).numpy()
    got = te.run_onnx(prepared, x)[0]
    assert np.abs(got - ref).max() <= te.tolerance("fp16", ref)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_int8_needs_a_qdq_model_and_plugins_keep_bare_nodes(seed7_onnx):
    source = onnx.load(str(seed7_onnx))
    with pytest.raises(ExportError, match="Q/DQ"):
        te.prepare_onnx(source, "int8")
    with pytest.raises(ExportError, match="precision"):
        te.prepare_onnx(source, "bf16")
    bare = te.prepare_onnx(source, "fp32", plugins=True)
    assert not bare.functions and sum(n.domain == "tinyvim" for n in bare.graph.node) == 13


# -- build settings ---------------------------------------------------------------------------------

def test_batch_profiles():
    assert te.parse_batch_profile(None, 4) == rt.BatchProfile(4, 4, 4)
    assert te.parse_batch_profile(None, None) == rt.BatchProfile(1, 1, 8)
    profile = te.parse_batch_profile("1,4,16", None)
    assert profile.shapes((224, 256)) == ((1, 3, 224, 256), (4, 3, 224, 256), (16, 3, 224, 256))
    assert not profile.static and rt.BatchProfile(2, 2, 2).static
    for bad in ("1,4", "a,b,c", "4,2,8", "0,1,2"):
        with pytest.raises(ExportError):
            te.parse_batch_profile(bad, None)
    with pytest.raises(ExportError, match="--dynamic-batch"):
        te.parse_batch_profile("1,2,4", 1)


def test_build_mode_rules():
    te.check_build_mode("10.13.0.35", strongly_typed=False, precision="fp16", dla_core=None)
    te.check_build_mode("11.4.0.106", strongly_typed=True, precision="int8", dla_core=0)
    with pytest.raises(ExportError, match="strongly typed"):
        te.check_build_mode("11.4.0.106", strongly_typed=False, precision="fp16", dla_core=None)
    with pytest.raises(ExportError, match="DLA"):
        te.check_build_mode("10.13.0.35", strongly_typed=True, precision="fp32", dla_core=0)


def test_engine_and_sidecar_appear_together_or_not_at_all(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(RuntimeError):
        with te._written_together(engine, rt.sidecar_path(engine)) as (e, s):
            e.write_bytes(b"plan")
            s.write_text("{}")
            raise RuntimeError("validation failed")
    assert list(tmp_path.iterdir()) == []
    with te._written_together(engine, rt.sidecar_path(engine)) as (e, s):
        e.write_bytes(b"plan")
        s.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]


# -- sidecar and compatibility --------------------------------------------------------------------------

def test_sidecar_round_trip_and_bad_sidecars(tmp_path):
    sidecar = rt.EngineSidecar(**SIDECAR)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ArtifactError, match="no sidecar"):
        rt.read_sidecar(engine)
    rt.sidecar_path(engine).write_text(json.dumps(sidecar.to_json()))
    assert rt.read_sidecar(engine) == sidecar
    data = sidecar.to_json()
    del data["gpu_name"]
    rt.sidecar_path(engine).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="gpu_name"):
        rt.read_sidecar(engine)
    rt.sidecar_path(engine).write_text(json.dumps({**sidecar.to_json(), "format": "other"}))
    with pytest.raises(ArtifactError, match="not a tinyvim-deploy engine sidecar"):
        rt.read_sidecar(engine)
    rt.sidecar_path(engine).write_text("{not json")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        rt.read_sidecar(engine)


@pytest.mark.parametrize("change, needle", [
    ({"tensorrt_version": "10.14.1.48"}, "built with TensorRT 10.13.0.35, this is TensorRT 10.14.1.48"),
    ({"gpu_name": "NVIDIA H100", "compute_capability": "9.0"}, "built for Orin (compute 8.7), this GPU is NVIDIA H100"),
    ({"engine_sha256": "c" * 64}, "does not match its sidecar"),
])
def test_engines_for_another_tensorrt_or_gpu_are_refused_with_rebuild(change, needle):
    sidecar = rt.EngineSidecar(**SIDECAR)
    here = dict(tensorrt_version="10.13.0.35", gpu_name="Orin", compute_capability="8.7", engine_sha256="b" * 64)
    rt.check_compatible(sidecar, **here)  # the machine it was built for
    with pytest.raises(ArtifactError, match="rebuild") as info:
        rt.check_compatible(sidecar, **{**here, **change})
    assert needle in str(info.value)


def test_engine_files_pick_the_tensorrt_backend_which_says_what_is_missing(tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    rt.sidecar_path(engine).write_text(json.dumps(rt.EngineSidecar(**{
        **SIDECAR, "metadata": _metadata()}).to_json()))
    assert backend_for(engine) == "tensorrt"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed here"):
        rt.TensorRTBackend(engine)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # tensorrt-stubs alone
    with pytest.raises(BackendUnavailableError, match="empty package"):
        rt.import_tensorrt()


def _metadata() -> dict[str, str]:
    from tinyvim_deploy.export.metadata import build_metadata
    from tinyvim_deploy.models import get_spec

    return build_metadata(get_spec("tinyvim-s"), input_hw=(224, 224), batch=1, opset=20, scan_impl="scan",
                          custom_ops="functions", weights_sha256="none", torch_version="x", toolkit_version="x")


# -- the static op check ------------------------------------------------------------------------------

def _one_node_model(node: onnx.NodeProto, inputs, initializers=(), opset: int = 20) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
        [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)], list(initializers))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


@pytest.mark.parametrize("model, needle", [
    (_one_node_model(onnx.helper.make_node("CumSum", ["x", "axis"], ["y"]), [("x", [2, 3])]), "CumSum axis"),
    (_one_node_model(onnx.helper.make_node("Einsum", ["x", "x2"], ["y"], equation="...ij,...jk->...ik"),
                     [("x", [2, 3]), ("x2", [3, 2])]), "ellipsis"),
    (_one_node_model(onnx.helper.make_node("Einsum", ["x"], ["y"], equation="ii->i"), [("x", [3, 3])]), "diagonal"),
    (_one_node_model(onnx.helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic"), [("x", [1, 1, 2, 2])],
                     [onnx.numpy_helper.from_array(np.ones(4, np.float32), "scales")]), "Resize mode 'cubic'"),
    (_one_node_model(onnx.helper.make_node("Unique", ["x"], ["y"]), [("x", [4])]), "not supported"),
    (_one_node_model(onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]), [("q", [4])], [
        onnx.numpy_helper.from_array(np.float32(0.1), "s"), onnx.numpy_helper.from_array(np.uint8(128), "z")]),
     "zero point is not 0"),
])
def test_checker_flags_what_the_tensorrt_parser_refuses(model, needle):
    report = check_onnx(model, "10.15")
    assert not report.supported
    assert any(needle in note for row in report.rows for note in row.notes), report.rows


def test_checker_cli_on_the_exported_model(seed7_onnx):
    r = tvdeploy("check", seed7_onnx, "--target", "trt")
    assert r.returncode == 0 and "every op is supported" in r.stdout and "Scan length 49 (static)" in r.stdout
    r = tvdeploy("check", seed7_onnx, "--trt-version", "9.2")
    assert r.returncode == 1 and "opset 20 is outside TensorRT 9.2" in r.stdout and "Gelu" in r.stdout
    r = tvdeploy("check", seed7_onnx, "--keep-custom-ops")
    assert r.returncode == 1 and "tinyvim::SelectiveScan" in r.stdout and "--plugin-lib" in r.stdout
    r = tvdeploy("check", seed7_onnx, "--trt-version", "8.6")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_devices_and_the_bench_compare_row_without_tensorrt(tmp_path, monkeypatch):
    assert [rt.cuda_device_index(d) for d in ("cpu", "cuda", "cuda:1")] == [0, 0, 1]
    with pytest.raises(BackendUnavailableError, match="CUDA GPU"):
        rt.cuda_device_index("mps")
    from tinyvim_deploy.profiling import compare_formats

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    (row,) = compare_formats("tinyvim-s", ["trt"], workdir=tmp_path, iterations=1, warmup=0)
    assert row.status.startswith("unavailable: TensorRT is not installed here") and not list(tmp_path.glob("*.onnx"))


def test_segmentor_fp16_graph_keeps_its_tails_in_fp32(tmp_path):
    """tinyvim-s-cgrseg-ssa: prototype/SSA matmuls and L2 norms stay FP32; TensorRT's parser takes the graph."""
    from tinyvim_deploy.export.onnx_export import export_onnx

    torch.manual_seed(0)
    path = export_onnx("tinyvim-s-cgrseg-ssa", output=tmp_path / "ssa.onnx", input_size=128, photos_dir=None).path
    source = onnx.load(str(path))
    prepared = te.prepare_onnx(source, "fp16")
    kinds = value_types(prepared)
    tails = [n for n in prepared.graph.node if n.op_type in ("MatMul", "ReduceL2", "Softmax")]
    assert len(tails) >= 8 and all(kinds[i] == onnx.TensorProto.FLOAT for n in tails for i in n.input if i)
    assert check_onnx(source, "10.15").supported
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)
    ref, got = te.run_onnx(source, x)[0], te.run_onnx(prepared, x)[0]
    assert np.abs(got - ref).max() <= te.tolerance("fp16", ref)
    assert np.mean(got.argmax(1) == ref.argmax(1)) > 0.99


def test_detector_engine_path_prepares_and_judges_without_tensorrt(tmp_path):
    """tinyvim-s-det for TensorRT: the EfficientNMS_TRT graph survives preparation, the NMS plugin and scan stay
    FP32, the graph before the plugin matches PyTorch in ORT, and the engine's judge accepts the contract's
    four outputs when they are right (the ONNX-NMS export stands in for the engine) and refuses them when not."""
    from tinyvim_deploy.export.metadata import read_metadata
    from tinyvim_deploy.export.nms import cut_before_nms, has_efficient_nms
    from tinyvim_deploy.export.onnx_export import export_onnx
    from tinyvim_deploy.export.validate import validation_inputs
    from tinyvim_deploy.models import create_model, get_spec

    torch.manual_seed(0)
    weights = tmp_path / "det.pth"
    model = create_model("tinyvim-s-det").eval()
    with torch.no_grad():  # a random head scores every class alike; set them apart so a wrong class shows
        model.head.cls_logits.bias.copy_(torch.linspace(-6.0, -1.0, 6))
    torch.save(model.state_dict(), weights)
    trt_path = export_onnx("tinyvim-s-det", weights=weights, output=tmp_path / "trt.onnx", input_size=128,
                           nms="efficient-nms", photos_dir=None).path
    ort_path = export_onnx("tinyvim-s-det", weights=weights, output=tmp_path / "ort.onnx", input_size=128,
                           photos_dir=None).path
    source = onnx.load(str(trt_path))
    metadata = read_metadata(source)
    inputs = validation_inputs((128, 128), [1], get_spec("tinyvim-s-det"), PHOTOS if PHOTOS.is_dir() else None)
    reference = te.reference_outputs(model, None, inputs)
    assert check_onnx(source, "10.15").supported  # EfficientNMS_TRT is TensorRT's own plugin
    for precision in ("fp32", "fp16"):
        prepared = te.prepare_onnx(source, precision)
        assert has_efficient_nms(prepared) and not any(n.domain == "tinyvim" for n in prepared.graph.node)
        plugin = next(n for n in prepared.graph.node if n.op_type == "EfficientNMS_TRT")
        assert plugin.name in te.fp32_node_names(prepared)
        kinds = value_types(cut_before_nms(prepared))
        assert all(kinds[i] == onnx.TensorProto.FLOAT for i in plugin.input)  # float32 boxes and scores in
        judge = te._judge_for(metadata, precision)
        report = judge(lambda x, p=prepared: te.run_onnx(cut_before_nms(p), x), reference)
        assert report.passed and report.max_abs <= te.RTOL[precision], report.checks

    judge = te._judge_for(metadata, "fp16")
    ort_model = onnx.load(str(ort_path))

    def engine_stand_in(x, change=None):
        outputs = te.run_onnx(ort_model, x)
        if change:
            change(outputs)
        return outputs

    good = judge(engine_stand_in, reference)
    assert good.passed and [c for c in good.checks if "best detection" in c.name]
    assert all(c.top1_agree == 1.0 for c in good.checks if not c.info)

    def shift_scores(outputs):
        outputs[2] += 0.05

    def wrong_class(outputs):
        outputs[3][:, 0] = (outputs[3][:, 0] + 1) % 6

    def nothing_found(outputs):
        outputs[0][:] = 0

    for change in (shift_scores, wrong_class, nothing_found):
        assert not judge(lambda x, c=change: engine_stand_in(x, c), reference).passed, change.__name__


def test_detector_target_trt_asks_for_tensorrt_and_refuses_onnx_nms(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed (Jetson/GPU hosts have it)
    r = tvdeploy("export", "--model", "tinyvim-s-det", "--target", "trt", "-o", tmp_path / "d.onnx")
    assert r.returncode == 2 and "TensorRT is not installed" in r.stderr and not list(tmp_path.iterdir())
    r = tvdeploy("export", "--model", "tinyvim-s-det", "--target", "trt", "--nms", "onnx")
    assert r.returncode == 2 and "--nms efficient-nms" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = tvdeploy("export", "--model", "tinyvim-s-det", "--target", "trt", "--precision", "int8")
    assert r.returncode == 2 and "INT8 export of detectors" in r.stderr
