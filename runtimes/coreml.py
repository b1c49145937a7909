"""Core ML backend: runs an exported ``.mlpackage`` through ``MLModel.predict`` (macOS only).

The package takes an RGB image (``ImageType``; normalisation is inside the model), so a
preprocessed batch is mapped back to the centre-cropped uint8 pixels (exact: the crop was uint8)
and fed image by image. The classifier's ``classLabel_probs`` holds the model's last output per
class name (logits: no softmax is added), returned in class order.
Option ``compute_units``: ``all`` (default, Neural Engine allowed), ``cpu_and_gpu``, ``cpu_only``,
``cpu_and_ne``. On Linux, coremltools converts but cannot predict: loading says so in one line.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from tinyvim_deploy.errors import ArtifactError, BackendUnavailableError
from tinyvim_deploy.runtimes.base import Backend, TensorInfo
from tinyvim_deploy.tasks import get_task

COMPUTE_UNITS = {"all": "ALL", "cpu_and_gpu": "CPU_AND_GPU", "cpu_only": "CPU_ONLY", "cpu_and_ne": "CPU_AND_NE"}


def read_user_metadata(user: dict[str, str], source: str) -> dict[str, str]:
    """The ``tinyvim_deploy.*`` entries a Core ML export writes into ``user_defined_metadata``."""
    meta = {k.removeprefix("tinyvim_deploy."): v for k, v in user.items() if k.startswith("tinyvim_deploy.")}
    if not meta:
        raise ArtifactError(f"{source} has no tinyvim-deploy metadata (not exported by tvdeploy).")
    return meta


class CoreMLBackend(Backend):
    name = "coreml"

    def _load(self) -> None:
        from tinyvim_deploy.export.coreml_export import import_coremltools

        if sys.platform != "darwin":
            raise BackendUnavailableError("Core ML prediction needs macOS (coremltools converts on Linux but cannot "
                                          "run models): bench the .mlpackage on a Mac, or use Xcode's performance report.")
        ct = import_coremltools()
        units = self.options.get("compute_units", "all")
        if units not in COMPUTE_UNITS:
            raise BackendUnavailableError(f"Unknown compute units {units!r}: choose {', '.join(COMPUTE_UNITS)}.")
        self.model = ct.models.MLModel(str(self.artifact), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[units]))
        from tinyvim_deploy.export.metadata import class_names_from_metadata, spec_from_metadata

        meta = read_user_metadata(dict(self.model.get_spec().description.metadata.userDefined), str(self.artifact))
        self.spec, self.input_hw = spec_from_metadata(meta, str(self.artifact))
        self.class_names = class_names_from_metadata(meta)
        self.task = get_task(self.spec.task)
        self._mean = np.asarray(json.loads(meta["mean"]), np.float32)
        self._std = np.asarray(json.loads(meta["std"]), np.float32)
        self.device = f"coreml:{units}"

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        from PIL import Image

        from tinyvim_deploy.preprocess import to_pixels

        out = []
        for image in to_pixels(batch, self._mean, self._std):  # (a segmentor's zero padding -> the mean colour)
            prediction = self.model.predict({"image": Image.fromarray(image)})
            out.append(self.task.coreml_read(prediction, self.class_names))
        return [np.asarray(out, np.float32)]

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo("image", (1, 3, *self.input_hw), "image RGB")]

    def outputs(self) -> list[TensorInfo]:
        return self.task.coreml_outputs(self.spec)
