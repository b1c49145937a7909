"""Core ML's NMS: the detection ML program and a ``NonMaximumSuppression`` model, as one Pipeline.

That is the layout Vision's object-detection requests expect. :func:`coreml_detection_wrapper` gives the
ML program its ``confidence`` / ``coordinates`` outputs; :func:`coreml_nms_pipeline` adds the NMS model.
coremltools is imported only when a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tinyvim_deploy.errors import ExportError
from tinyvim_deploy.export.nms.contract import NMSConfig

__all__ = ["COREML_CLASS_MULTIPLE", "CoreMLDetectionOutputs", "coreml_detection_wrapper", "coreml_nms_pipeline"]

COREML_CLASS_MULTIPLE = 80  # ultralytics#22309: ML-program NMS misbehaves unless C is a multiple of 80


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = (int(s) for s in input_size)
    return h, w


class CoreMLDetectionOutputs(nn.Module):
    """(boxes [1,N,4] pixel x1y1x2y2, scores [1,N,C]) -> (confidence [N,C'], coordinates [N,4] cx,cy,w,h / size).

    C' = C rounded up to a multiple of ``class_multiple`` with zero columns (ultralytics#22309: Core ML's
    NMS in a pipeline with an ML program misbehaves otherwise); zero columns never pass the confidence
    threshold, so they only cost a little bandwidth. Batch 1 only: Vision runs one image per request.
    """

    def __init__(self, detector: nn.Module, input_size: int | Sequence[int], class_multiple: int = COREML_CLASS_MULTIPLE):
        super().__init__()
        self.detector = detector
        h, w = _hw(input_size)
        self.class_multiple = class_multiple
        self.register_buffer("normalise", torch.tensor([1.0 / w, 1.0 / h, 1.0 / w, 1.0 / h]), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores = self.detector(image)
        boxes, scores = boxes[0], scores[0]
        centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        size = boxes[:, 2:] - boxes[:, :2]
        coordinates = torch.cat((centre, size), dim=1) * self.normalise
        pad = -scores.shape[-1] % self.class_multiple if self.class_multiple > 1 else 0
        confidence = F.pad(scores, (0, pad)) if pad else scores
        return confidence, coordinates


def coreml_detection_wrapper(detector: nn.Module, input_size: int | Sequence[int],
                             class_multiple: int = COREML_CLASS_MULTIPLE) -> nn.Module:
    """Wrap a detector for conversion to the ML program :func:`coreml_nms_pipeline` expects (eval mode)."""
    return CoreMLDetectionOutputs(detector, input_size, class_multiple).eval()


def coreml_nms_pipeline(mlmodel, config: NMSConfig | None, class_names: Sequence[str],
                        input_size: int | Sequence[int]):
    """The detection ML program followed by Core ML's ``NonMaximumSuppression``, as one Pipeline model.

    ``mlmodel`` is the converted :func:`coreml_detection_wrapper`: one input (an image, for Vision) and two
    outputs, [N,C'] confidences and [N,4] normalised cx,cy,w,h coordinates, named ``confidence`` /
    ``coordinates`` (renamed here to ``raw_*``, since the pipeline's outputs take those names) or given
    in that order, both float32 (an iOS16+ FP16 program needs ``ct.TensorType(..., dtype=np.float32)``
    outputs). The pipeline has the inputs ``image`` (the program's input), ``iouThreshold`` and
    ``confidenceThreshold`` (optional doubles overriding the config's values) and outputs ``confidence
    [0..,C']`` and ``coordinates [0..,4]``: variable-length, one row per kept box, no ``max_det`` cap.
    NMS is per class (``pickTop.perClass``), but Core ML gives each box one label (its argmax) where the
    other backends keep every (box, class) pair above the threshold. Vision reads a row's confidences as
    summing to at most 1 (the proto's rule); our per-class scores are independent, so its object-level
    confidence can exceed what one class says. Class labels beyond ``class_names`` (the zero-padding
    columns) are called ``unused_<i>``. The outputs' row range is [0, unbounded): Core ML could also cap
    or pad rows (an upper bound on the shape range), which Vision does not need and nothing here tests.

    Building and saving work on Linux; prediction needs macOS.
    """
    from tinyvim_deploy.export.coreml_export import import_coremltools

    ct = import_coremltools()
    config = config or NMSConfig()
    spec = mlmodel.get_spec()
    if len(spec.description.output) != 2 or len(spec.description.input) != 1:
        raise ExportError("The detection Core ML model needs one input and two outputs (confidence, coordinates).")
    names = [o.name for o in spec.description.output]
    if set(names) == {"confidence", "coordinates"}:
        order = [names.index("confidence"), names.index("coordinates")]
    else:
        order = [0, 1]
    for i, new in zip(order, ("raw_confidence", "raw_coordinates")):
        old = spec.description.output[i].name
        if old != new:
            ct.utils.rename_feature(spec, old, new, rename_inputs=False)
    confidence_out, coordinates_out = (spec.description.output[i] for i in order)
    conf_shape = list(confidence_out.type.multiArrayType.shape)
    coord_shape = list(coordinates_out.type.multiArrayType.shape)
    if len(conf_shape) != 2 or coord_shape != [conf_shape[0], 4]:
        raise ExportError(f"Core ML detection outputs should be confidence [N,C] and coordinates [N,4], got "
                          f"{conf_shape} and {coord_shape}.")
    array_type = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    for feature in (confidence_out, coordinates_out):
        if feature.type.multiArrayType.dataType not in (array_type.FLOAT32, array_type.DOUBLE):
            # NonMaximumSuppression.proto asks for double inputs; float32 is what Ultralytics' pipelines ship.
            # An iOS16+ FP16 program outputs float16 unless told otherwise.
            raise ExportError(f"Core ML NMS needs float32 (or double) inputs; {feature.name!r} is "
                              f"{array_type.ArrayDataType.Name(feature.type.multiArrayType.dataType)}: convert with "
                              "outputs=[ct.TensorType(name=..., dtype=np.float32), ...].")
    num_columns = conf_shape[1]
    if len(class_names) > num_columns:
        raise ExportError(f"{len(class_names)} class names for {num_columns} confidence columns.")
    labels = list(class_names) + [f"unused_{i}" for i in range(len(class_names), num_columns)]
    image = spec.description.input[0]
    h, w = _hw(input_size)
    if image.type.WhichOneof("Type") == "imageType" and (image.type.imageType.height, image.type.imageType.width) != (h, w):
        raise ExportError(f"The Core ML model's image is {image.type.imageType.height}x{image.type.imageType.width}, "
                          f"not {h}x{w}.")
    weights_dir = getattr(mlmodel, "weights_dir", None)
    detector = ct.models.MLModel(spec, weights_dir=weights_dir, skip_model_load=True)

    nms_spec = ct.proto.Model_pb2.Model()
    nms_spec.specificationVersion = spec.specificationVersion
    for feature, out_name in ((confidence_out, "confidence"), (coordinates_out, "coordinates")):
        nms_spec.description.input.add().CopyFrom(feature)
        out = nms_spec.description.output.add()
        out.CopyFrom(feature)
        out.name = out_name
        # one row per kept box: [0.., columns]
        array = out.type.multiArrayType
        columns = array.shape[-1]
        del array.shape[:]
        rows, cols = array.shapeRange.sizeRanges.add(), array.shapeRange.sizeRanges.add()
        rows.lowerBound, rows.upperBound = 0, -1
        cols.lowerBound = cols.upperBound = columns
    nms = nms_spec.nonMaximumSuppression
    nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName = confidence_out.name, coordinates_out.name
    nms.confidenceOutputFeatureName, nms.coordinatesOutputFeatureName = "confidence", "coordinates"
    nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName = "iouThreshold", "confidenceThreshold"
    nms.iouThreshold, nms.confidenceThreshold = float(config.iou_threshold), float(config.score_threshold)
    nms.pickTop.perClass = True  # class-aware, like the reference (users expect it: ultralytics#8118)
    nms.stringClassLabels.vector.extend(labels)
    nms_model = ct.models.MLModel(nms_spec, skip_model_load=True)

    pipeline = ct.models.pipeline.Pipeline(
        input_features=[(image.name, ct.models.datatypes.Array(3, h, w)),
                        ("iouThreshold", ct.models.datatypes.Double()),
                        ("confidenceThreshold", ct.models.datatypes.Double())],
        output_features=["confidence", "coordinates"],
    )
    pipeline.add_model(detector)
    pipeline.add_model(nms_model)
    described = pipeline.spec.description
    described.input[0].CopyFrom(image)  # the program's own input (an ImageType for Vision)
    for i in (1, 2):  # the thresholds are optional: NMS falls back to its stored values
        described.input[i].type.isOptional = True
    described.output[0].CopyFrom(nms_spec.description.output[0])
    described.output[1].CopyFrom(nms_spec.description.output[1])
    pipeline.spec.specificationVersion = spec.specificationVersion
    described.metadata.userDefined.update({
        "com.apple.coreml.model.preview.type": "objectDetector",  # Xcode's preview draws the boxes
        "tinyvim_deploy.nms_iou_threshold": str(config.iou_threshold),
        "tinyvim_deploy.nms_score_threshold": str(config.score_threshold),
        "tinyvim_deploy.num_classes": str(len(class_names)),
        "tinyvim_deploy.confidence_columns": str(num_columns),
    })
    described.input[1].shortDescription = f"(optional) IoU threshold override (default {config.iou_threshold})"
    described.input[2].shortDescription = (f"(optional) confidence threshold override (default "
                                            f"{config.score_threshold})")
    described.output[0].shortDescription = "boxes × class confidence (columns beyond the classes are padding)"
    described.output[1].shortDescription = "boxes × [cx, cy, w, h], relative to the input size"
    return ct.models.MLModel(pipeline.spec, weights_dir=weights_dir, skip_model_load=True)
