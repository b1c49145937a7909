"""NMS appended to exported detectors (export/nms/): ONNX subgraph vs the PyTorch reference in ORT,
the EfficientNMS_TRT graph's structure, and the Core ML pipeline's spec."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.nms import (
    OUTPUT_NAMES,
    NMSConfig,
    append_efficient_nms_trt,
    append_onnx_nms,
    coreml_detection_wrapper,
    coreml_nms_pipeline,
    cut_before_nms,
    structural_check_efficient_nms,
)
from tinyvim_deploy.models.detection import DetectorWithNMS
from tinyvim_deploy.tasks.nms import multiclass_nms


def passthrough_model(n: int, c: int, batch: int | str = "B", opset: int = 17) -> onnx.ModelProto:
    """in_boxes [B,N,4], in_scores [B,N,C] -> Identity -> boxes, scores (what a detector export ends with)."""
    nodes = [helper.make_node("Identity", ["in_boxes"], ["boxes"]), helper.make_node("Identity", ["in_scores"], ["scores"])]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("in_boxes", TensorProto.FLOAT, [batch, n, 4]),
         helper.make_tensor_value_info("in_scores", TensorProto.FLOAT, [batch, n, c])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, n, c])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def random_detections(seed: int, b: int, n: int, c: int, levels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in overlapping clusters; scores all distinct (``levels`` > 0: quantised, so with many ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(40, 280, (b, max(1, n // 12), 2))
    pick = rng.integers(0, centres.shape[1], (b, n))
    xy = np.take_along_axis(centres, pick[..., None], axis=1) + rng.normal(0, 6, (b, n, 2))
    wh = rng.uniform(15, 60, (b, n, 2))
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=-1).astype(np.float32)
    ranks = rng.permutation(b * n * c).reshape(b, n, c)
    scores = ((ranks + 1) / (b * n * c + 1)) ** 2  # distinct, about a fifth of them below 0.05
    if levels:
        scores = np.round(scores * levels) / levels
    return boxes, scores.astype(np.float32)


def run_onnx(model: onnx.ModelProto, boxes: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"in_boxes": boxes, "in_scores": scores})))


def assert_matches_reference(got: dict[str, np.ndarray], boxes: np.ndarray, scores: np.ndarray, config: NMSConfig):
    ref = multiclass_nms(torch.from_numpy(boxes), torch.from_numpy(scores), **config.as_kwargs())
    np.testing.assert_array_equal(got["num_dets"], ref.num_dets.numpy())
    np.testing.assert_array_equal(got["classes"], ref.classes.numpy())  # padding -1 included
    np.testing.assert_allclose(got["scores"], ref.scores.numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(got["boxes"], ref.boxes.numpy(), rtol=0, atol=0)
    for name, dtype in zip(OUTPUT_NAMES, (np.int32, np.float32, np.float32, np.int32)):
        assert got[name].dtype == dtype
    return ref


CASES = [  # seed, B, N, C, config
    (0, 1, 60, 1, NMSConfig()),  # N < pre_nms_topk, C·K' < max_det (the zero tensor is padded to max_det)
    (1, 2, 300, 6, NMSConfig(pre_nms_topk=100)),  # N > pre_nms_topk
    (2, 2, 1200, 6, NMSConfig()),  # the defaults, N > pre_nms_topk, more survivors than max_det
    (3, 1, 400, 6, NMSConfig(max_det=30, iou_threshold=0.3)),
    (4, 2, 500, 1, NMSConfig(pre_nms_topk=200, score_threshold=0.2, iou_threshold=0.5)),
]


@pytest.mark.parametrize(("seed", "b", "n", "c", "config"), CASES)
def test_onnx_nms_matches_reference(seed, b, n, c, config):
    model = append_onnx_nms(passthrough_model(n, c), config)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    boxes, scores = random_detections(seed, b, n, c)
    ref = assert_matches_reference(run_onnx(model, boxes, scores), boxes, scores, config)
    assert ref.num_dets.min() > 0
    if seed == 2:
        assert (ref.num_dets == config.max_det).all()  # the max_det cut is exercised


def test_onnx_nms_dynamic_batch_and_opsets():
    """One graph serves B = 1, 2, 3; ReduceMax is written both ways (axes attribute < 18, input >= 18)."""
    config = NMSConfig(pre_nms_topk=50, max_det=20)
    for opset in (13, 17, 20):
        model = append_onnx_nms(passthrough_model(80, 3, opset=opset), config)
        reduce_max = next(n for n in model.graph.node if n.op_type == "ReduceMax")
        assert (len(reduce_max.input) == 2) == (opset >= 18)
        for b in (1, 3):
            boxes, scores = random_detections(10 + b, b, 80, 3)
            assert_matches_reference(run_onnx(model, boxes, scores), boxes, scores, config)
    static = append_onnx_nms(passthrough_model(80, 3, batch=2), config)
    dims = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in static.graph.output}
    assert dims == {"num_dets": [2, 1], "boxes": [2, 20, 4], "scores": [2, 20], "classes": [2, 20]}


def test_onnx_nms_ties_break_like_the_reference():
    """Quantised scores (many equal values): order by score then flat index, NMS keeps the lower index."""
    config = NMSConfig(pre_nms_topk=150, max_det=60)
    model = append_onnx_nms(passthrough_model(200, 4), config)
    for seed in (20, 21):
        boxes, scores = random_detections(seed, 2, 200, 4, levels=8)
        assert_matches_reference(run_onnx(model, boxes, scores), boxes, scores, config)


def test_onnx_nms_zero_detections():
    config = NMSConfig(score_threshold=0.5)
    model = append_onnx_nms(passthrough_model(120, 6), config)
    boxes, scores = random_detections(5, 2, 120, 6)
    scores = scores * 0.5  # all <= 0.5: nothing passes a strict threshold (the == 0.5 case included)
    got = run_onnx(model, boxes, scores)
    assert_matches_reference(got, boxes, scores, config)
    assert (got["num_dets"] == 0).all() and (got["classes"] == -1).all() and not got["boxes"].any()
    scores[1] *= 2.0  # image 1 has detections again, image 0 none
    got = run_onnx(model, boxes, scores)
    ref = assert_matches_reference(got, boxes, scores, config)
    assert ref.num_dets[0, 0] == 0 and ref.num_dets[1, 0] > 0


def test_onnx_nms_strict_thresholds_at_equality():
    """IoU exactly at the threshold does not suppress, score exactly at it is not a candidate (ORT = reference)."""
    boxes = np.array([[[0, 0, 4, 1], [0, 0, 2, 1], [10, 10, 11, 11]]], np.float32)  # IoU(0, 1) = 0.5 exactly
    scores = np.array([[[0.9], [0.8], [0.25]]], np.float32)
    expected = {(0.5, 0.25): 2, (0.49, 0.25): 1, (0.5, 0.2): 3}
    for (iou, score), count in expected.items():
        config = NMSConfig(iou_threshold=iou, score_threshold=score)
        got = run_onnx(append_onnx_nms(passthrough_model(3, 1), config), boxes, scores)
        assert_matches_reference(got, boxes, scores, config)
        assert got["num_dets"][0, 0] == count


def test_onnx_nms_renames_raw_outputs_and_rejects_bad_inputs():
    model = append_onnx_nms(passthrough_model(10, 2))
    produced = {o for n in model.graph.node for o in n.output}
    assert {"raw_boxes", "raw_scores"} <= produced
    assert not any(n.op_type in ("Loop", "If", "NonZero") for n in model.graph.node)
    from tinyvim_deploy.export.tensorrt_check import check_onnx

    report = check_onnx(model, keep_custom_ops=True)  # every op and restriction in TensorRT's parser table
    assert report.supported, [(r.op, r.notes) for r in report.rows if r.status != "ok"]
    dynamic_n = passthrough_model(10, 2)
    dynamic_n.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "N"
    with pytest.raises(ExportError, match="static"):
        append_onnx_nms(dynamic_n)
    with pytest.raises(ExportError, match="opset"):
        append_onnx_nms(passthrough_model(10, 2, opset=11))
    with pytest.raises(ExportError, match="no output"):
        append_onnx_nms(passthrough_model(10, 2), boxes_name="bbox")
    with pytest.raises(ExportError):
        NMSConfig(score_threshold=-0.1)


def test_detector_with_nms_defaults_are_the_config_defaults():
    assert DetectorWithNMS(torch.nn.Identity()).nms_args == NMSConfig().as_kwargs()


# --------------------------------------------------------------------------------------------------
# EfficientNMS_TRT
# --------------------------------------------------------------------------------------------------


def test_efficient_nms_structure_and_cut():
    config = NMSConfig(score_threshold=0.1, iou_threshold=0.5, max_det=50)
    model = append_efficient_nms_trt(passthrough_model(100, 6), config)
    assert structural_check_efficient_nms(model) == []
    onnx.checker.check_model(model)  # the "TRT" domain keeps the whole graph checker-clean
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["max_output_boxes"] == 50 and attrs["plugin_version"] == b"1" and attrs["background_class"] == -1
    assert list(node.output) == list(OUTPUT_NAMES)

    cut = cut_before_nms(model)
    assert [o.name for o in cut.graph.output] == list(node.input) == ["raw_boxes", "raw_scores"]
    onnx.checker.check_model(cut, full_check=True)
    boxes, scores = random_detections(7, 2, 100, 6)
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    raw_boxes, raw_scores = session.run(None, {"in_boxes": boxes, "in_scores": scores})
    np.testing.assert_array_equal(raw_boxes, boxes)
    np.testing.assert_array_equal(raw_scores, scores)

    bare = append_efficient_nms_trt(passthrough_model(100, 6), config, domain="")  # TensorRT samples' form
    assert structural_check_efficient_nms(bare) == []


def test_efficient_nms_check_catches_mistakes():
    model = append_efficient_nms_trt(passthrough_model(100, 6))
    node = next(n for n in model.graph.node if n.op_type == "EfficientNMS_TRT")
    for attr in node.attribute:
        if attr.name == "score_activation":
            attr.i = 1  # would apply a second sigmoid to our scores
    problems = structural_check_efficient_nms(model)
    assert len(problems) == 1 and "score_activation" in problems[0]

    model = append_efficient_nms_trt(passthrough_model(100, 6))
    node = next(n for n in model.graph.node if n.op_type == "EfficientNMS_TRT")
    kept = [a for a in node.attribute if a.name != "plugin_version"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("plugin_version", 1)])  # int, not the string "1"
    node.output[3] = "labels"
    problems = " | ".join(structural_check_efficient_nms(model))
    assert "plugin_version" in problems and "node outputs" in problems

    model = append_efficient_nms_trt(passthrough_model(100, 6))
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    assert any("num_dets" in p for p in structural_check_efficient_nms(model))
    assert structural_check_efficient_nms(passthrough_model(100, 6)) == ["expected one EfficientNMS_TRT node, found 0"]


# --------------------------------------------------------------------------------------------------
# Core ML pipeline (structure only: Core ML cannot predict on Linux)
# --------------------------------------------------------------------------------------------------


def test_coreml_wrapper_outputs():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            boxes = torch.tensor([[[0.0, 0.0, 64.0, 32.0], [32.0, 16.0, 128.0, 128.0]]])
            return boxes, torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.3, 0.7]]])

    confidence, coordinates = coreml_detection_wrapper(Fixed(), (128, 256))(torch.zeros(1, 3, 128, 256))
    assert confidence.shape == (2, 80) and not confidence[:, 3:].any()
    torch.testing.assert_close(confidence[:, :3], torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.7]]))
    torch.testing.assert_close(coordinates, torch.tensor([[32 / 256, 16 / 128, 64 / 256, 32 / 128],
                                                          [80 / 256, 72 / 128, 96 / 256, 112 / 128]]))


def test_coreml_pipeline_structure(tmp_path):
    pytest.importorskip("coremltools", reason="coremltools not installed (pip install '.[coreml]')")
    import warnings

    import tinyvim_deploy as tv
    from tinyvim_deploy.export.coreml_export import import_coremltools

    ct = import_coremltools()
    detector = tv.create_model("tinyvim-s-det").eval()
    names = list(detector.spec.class_names)
    wrapped = coreml_detection_wrapper(detector, 128)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapped, (x,)).run_decompositions({})
        mlmodel = ct.convert(program, inputs=[ct.ImageType(name="image", shape=(1, 3, 128, 128), scale=1 / 255.0)],
                             outputs=[ct.TensorType(name="confidence", dtype=np.float32),
                                      ct.TensorType(name="coordinates", dtype=np.float32)],
                             convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16)
    config = NMSConfig(score_threshold=0.25, iou_threshold=0.45)
    with pytest.raises(ExportError, match="4x4|128x128"):
        coreml_nms_pipeline(mlmodel, config, names, 4)
    fp16 = mlmodel.get_spec()
    fp16.description.output[0].type.multiArrayType.dataType = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16

    class Converted:  # a stand-in with an FP16 output, as an iOS16+ FP16 program has by default
        weights_dir = mlmodel.weights_dir

        def get_spec(self):
            return fp16

    with pytest.raises(ExportError, match="float32"):
        coreml_nms_pipeline(Converted(), config, names, 128)
    path = tmp_path / "det.mlpackage"
    coreml_nms_pipeline(mlmodel, config, names, 128).save(str(path))

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "pipeline"
    inputs = {i.name: i for i in spec.description.input}
    assert list(inputs) == ["image", "iouThreshold", "confidenceThreshold"]
    assert inputs["image"].type.WhichOneof("Type") == "imageType" and inputs["image"].type.imageType.width == 128
    assert inputs["iouThreshold"].type.isOptional and inputs["confidenceThreshold"].type.isOptional
    outputs = {o.name: o.type.multiArrayType.shapeRange.sizeRanges for o in spec.description.output}
    assert list(outputs) == ["confidence", "coordinates"]
    assert [(r.lowerBound, r.upperBound) for r in outputs["confidence"]] == [(0, -1), (80, 80)]
    assert [(r.lowerBound, r.upperBound) for r in outputs["coordinates"]] == [(0, -1), (4, 4)]
    array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    assert {o.type.multiArrayType.dataType for o in spec.description.output} == {array_type.FLOAT32}

    program_spec, nms_spec = spec.pipeline.models
    assert program_spec.WhichOneof("Type") == "mlProgram"
    n = 16 * 16 + 8 * 8 + 4 * 4  # points at strides 8, 16, 32 for a 128 input
    raw = {o.name: list(o.type.multiArrayType.shape) for o in program_spec.description.output}
    assert raw == {"raw_confidence": [n, 80], "raw_coordinates": [n, 4]}
    nms = nms_spec.nonMaximumSuppression
    assert nms.pickTop.perClass
    assert nms.iouThreshold == pytest.approx(0.45) and nms.confidenceThreshold == pytest.approx(0.25)
    assert (nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName) == ("raw_confidence", "raw_coordinates")
    assert (nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName) == ("iouThreshold",
                                                                                           "confidenceThreshold")
    labels = list(nms.stringClassLabels.vector)
    assert labels[:len(names)] == names and len(labels) == 80 and labels[-1] == "unused_79"
    assert spec.description.metadata.userDefined["com.apple.coreml.model.preview.type"] == "objectDetector"
