"""Image classification: the official evaluation crop in, top-k classes out, accuracy on a labelled folder.

Preprocessing is TinyViM's evaluation transform: resize the short side to ``size / crop_pct`` (256 for
a 224 input at crop_pct 0.875; bicubic, PIL), centre-crop to the input size, ImageNet mean/std.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tinyvim_deploy.export.checks import Check, value_check
from tinyvim_deploy.tasks.base import Task


@dataclasses.dataclass(repr=False)
class ClassificationResult:
    indices: list[int]  # top-k class indices, best first
    labels: list[str]
    scores: list[float]  # softmax probabilities
    logits: np.ndarray  # all classes
    source: str = ""

    def as_dict(self) -> dict:
        return {"source": self.source, "indices": self.indices, "labels": self.labels, "scores": self.scores}

    def __repr__(self) -> str:  # the top few, not 1000 logits
        top = ", ".join(f"{label!r}: {score:.3f}" for label, score in zip(self.labels[:3], self.scores[:3]))
        more = f", … {len(self.labels) - 3} more" if len(self.labels) > 3 else ""
        return f"ClassificationResult({self.source!r}, top-{len(self.labels)}: {{{top}{more}}})"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class AccuracyMetrics:
    """Top-1/top-5 accuracy of a classifier on labelled images (folder names = class order)."""

    images: int
    top1: float
    top5: float

    def table(self) -> list[str]:
        return [f"top-1 accuracy  {100 * self.top1:6.2f} %", f"top-5 accuracy  {100 * self.top5:6.2f} %",
                f"images          {self.images:6d}"]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ClassificationTask(Task):
    name = "classification"

    def preprocess(self, images, spec, input_hw):
        from tinyvim_deploy.preprocess import preprocess

        size = input_hw or tuple(spec.input_size[1:])
        batch = preprocess(images, size, crop_pct=spec.crop_pct, interpolation=spec.interpolation, mean=spec.mean,
                           std=spec.std)
        return batch, [None] * len(images)

    def describe_preprocessing(self, spec) -> str:
        return f"crop {spec.crop_pct} {spec.interpolation}"

    def postprocess(self, outputs, contexts, sources, predictor) -> list[ClassificationResult]:
        logits = outputs[0]
        if logits.ndim != 2:
            from tinyvim_deploy.errors import ArtifactError

            raise ArtifactError(f"A classifier returns [batch, classes] logits; this artifact returned {logits.shape}.")
        k = min(predictor.topk, logits.shape[1])
        probs = softmax(logits)
        results = []
        for row, p, source in zip(logits, probs, sources):
            top = np.argsort(-row, kind="stable")[:k]
            results.append(ClassificationResult([int(i) for i in top], [predictor.class_names[i] for i in top],
                                                [float(p[i]) for i in top], row, source))
        return results

    def render(self, result, top):
        from tinyvim_deploy.reports import prediction_table

        return prediction_table(result)

    def coreml_convert_options(self, ct, spec) -> dict:
        # a classifier's outputs are (classLabel, classLabel_probs), as Xcode and Vision expect
        return {"classifier_config": ct.ClassifierConfig(list(spec.class_names))}

    def coreml_kind(self, spec) -> str:
        return "image classifier"

    def coreml_outputs(self, spec):
        from tinyvim_deploy.runtimes.base import TensorInfo

        return [TensorInfo("classLabel_probs", (1, spec.num_classes), "float32")]

    def coreml_read(self, prediction, class_names):
        probs = prediction["classLabel_probs"]
        return np.asarray([probs[name] for name in class_names], np.float32)

    def torch_outputs(self, spec):
        from tinyvim_deploy.runtimes.base import TensorInfo

        return [TensorInfo("logits", (None, spec.num_classes), "float32")]

    def compare(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], name: str, atol: float,
                x: np.ndarray) -> list[Check]:
        ref, got = reference[0], candidate[0]
        top1 = float(np.mean(ref.argmax(1) == got.argmax(1))) if ref.ndim == 2 else None
        return [value_check(ref, got, name, atol, top1)]

    def evaluate(self, predictor, data: str, *, on_batch=None, batch_size: int = 32, **options) -> AccuracyMetrics:
        """Accuracy on a folder of class subfolders (sorted names = class indices, like ImageFolder) or a
        list file of ``path label`` lines."""
        from tinyvim_deploy.calibration.data import load_calibration_set
        from tinyvim_deploy.errors import DatasetError

        images = load_calibration_set(data, predictor.spec, predictor.backend.input_hw, samples=None, quiet=True)
        if images.labels is None:
            raise DatasetError(f"{data} has no labels: give a folder of class subfolders or a list file "
                               "of 'path label' lines.")
        logits = []
        for start in range(0, len(images), batch_size):
            logits.append(predictor.backend.run(images.tensors[start : start + batch_size])[0])
            if on_batch:
                on_batch(min(len(images), start + batch_size), len(images))
        scores = np.concatenate(logits)
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        return AccuracyMetrics(len(images), float(np.mean(top5[:, 0] == images.labels)),
                               float(np.mean((top5 == images.labels[:, None]).any(1))))


TASK = ClassificationTask()
