"""The small protocol every task implements, so that nothing outside ``tasks/`` branches on a task's name.

A task knows how images become the network's input (:meth:`Task.preprocess`), how the network's outputs
become results (:meth:`Task.postprocess`), how an exported file's outputs are judged against PyTorch's
(:meth:`Task.compare`), how a data set is scored (:meth:`Task.evaluate`), what it adds to an artifact's
metadata (:meth:`Task.metadata_fields`) and what the eager network returns (:meth:`Task.torch_outputs`).
The Predictor, export validation, INT8 calibration, profiling, the torch backend and the CLI call these.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from tinyvim_deploy.export.checks import Check
    from tinyvim_deploy.models.registry import ModelSpec
    from tinyvim_deploy.runtimes.base import TensorInfo


class Task(abc.ABC):
    """One kind of vision problem around a network. Stateless: one shared instance per task."""

    name: ClassVar[str]
    any_input_size: ClassVar[bool] = False  # eager PyTorch takes images at the task's own sizes
    has_nms: ClassVar[bool] = False  # the network's raw outputs need NMS (exports append it, or the Predictor runs it)
    can_output_labels: ClassVar[bool] = False  # ``--include-postprocess``: the graph can end in a label map
    trainable: ClassVar[bool] = False  # ``tvdeploy train`` / ``distill`` train this task's models
    int8_float_ops: ClassVar[tuple[str, ...]] = ()  # op types INT8 export always keeps in float for this task
    predict_options: ClassVar[frozenset[str]] = frozenset()  # task-only options of :meth:`predict` (e.g. ``slide``)
    saves_images: ClassVar[bool] = False  # :meth:`save` writes pictures of a result (``--save-dir``)

    # -- input -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, images: Sequence[np.ndarray], spec: ModelSpec, input_hw: tuple[int, int] | None
                   ) -> tuple[np.ndarray, list[Any]]:
        """HxWx3 uint8 RGB images -> (float32 NCHW batch, one context per image for :meth:`postprocess`).

        ``input_hw`` is the artifact's fixed input; None where the artifact takes any size and the task's
        own sizing rule applies (then a batch holds one image when images may differ in size).
        """

    def batch_size(self, requested: int | None, count: int, fixed_size: bool) -> int:
        """Images per inference call: the request, else all at once."""
        return max(1, requested or count)

    @abc.abstractmethod
    def describe_preprocessing(self, spec: ModelSpec) -> str:
        """One short phrase for ``tvdeploy models``."""

    # -- output ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def postprocess(self, outputs: list[np.ndarray], contexts: Sequence[Any], sources: Sequence[str],
                    predictor: Any, **options) -> list:
        """The artifact's outputs for one batch -> one result per image (settings read from ``predictor``)."""

    def predict(self, predictor: Any, decoded: Sequence[tuple[np.ndarray, str]], batch_size: int | None = None,
                **options) -> list:
        """Results for decoded (RGB, name) pairs: preprocess, run and postprocess, batch by batch."""
        unknown = sorted(set(options) - self.predict_options)
        if unknown:
            from tinyvim_deploy.errors import ArtifactError

            raise ArtifactError(f"{unknown[0]} is not an option for {self.name}; this model is a {self.name} model.")
        box = predictor.input_box
        step = self.batch_size(batch_size, len(decoded), box is not None)
        results: list = []
        for start in range(0, len(decoded), step):
            chunk = decoded[start : start + step]
            x, contexts = self.preprocess([rgb for rgb, _ in chunk], predictor.spec, box)
            outputs = predictor.backend.run(x)
            results += self.postprocess(outputs, contexts, [source for _, source in chunk], predictor, **options)
        return results

    @abc.abstractmethod
    def torch_outputs(self, spec: ModelSpec) -> list[TensorInfo]:
        """Names and shapes of what the eager network returns (for the torch backend)."""

    def metadata_fields(self, spec: ModelSpec) -> dict[str, str]:
        """Task-specific ``tinyvim_deploy.*`` metadata an export records (strings)."""
        return {}

    # -- validation and evaluation ---------------------------------------------------------------------
    @abc.abstractmethod
    def compare(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], name: str,
                atol: float, x: np.ndarray) -> list[Check]:
        """Checks of one input's outputs from two runners (PyTorch vs an export), judged with ``atol``."""

    def parity(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> tuple[float, bool]:
        """(max abs difference, same argmax everywhere) of the first outputs: ``bench --compare``'s columns."""
        ref, got = np.asarray(reference[0]), np.asarray(candidate[0])
        return float(np.abs(got - ref).max()), bool((got.argmax(1) == ref.argmax(1)).all())

    @abc.abstractmethod
    def evaluate(self, predictor: Any, data: str, *, on_batch=None, **options) -> Any:
        """Score ``predictor`` on a data set; the returned metrics have ``table()`` and ``as_dict()``."""

    def render_metrics(self, metrics: Any, title: str) -> Any:
        """What ``tvdeploy eval`` prints (a rich renderable)."""
        from rich.console import Group
        from rich.text import Text

        return Group(Text(title, style="bold"), *(Text("  " + row) for row in metrics.table()))

    # -- showing and saving results (tvdeploy predict) -------------------------------------------------------
    @abc.abstractmethod
    def render(self, result: Any, top: int) -> Any:
        """One result as a rich renderable (``tvdeploy predict``)."""

    def save(self, result: Any, rgb: np.ndarray, folder: Any) -> None:  # noqa: B027  (only tasks that draw)
        """Write what a user looks at for one result (``--save-dir``), where :attr:`saves_images`."""

    # -- Core ML (export/coreml_export.py, runtimes/coreml.py) -----------------------------------------------
    def coreml_convert_options(self, ct: Any, spec: ModelSpec) -> dict:
        """``ct.convert`` keyword arguments that shape the package's outputs."""
        return {}

    def coreml_kind(self, spec: ModelSpec) -> str:
        """What the package is, for its short description in Xcode."""
        return self.name

    def coreml_outputs(self, spec: ModelSpec) -> list[TensorInfo]:
        """What the Core ML backend returns."""
        from tinyvim_deploy.errors import BackendUnavailableError

        raise BackendUnavailableError(f"The Core ML backend does not run {self.name} packages.")

    def coreml_read(self, prediction: dict, class_names: Sequence[str]) -> np.ndarray:
        """One image's output from ``MLModel.predict``'s dictionary, as :meth:`coreml_outputs` describes it."""
        from tinyvim_deploy.errors import BackendUnavailableError

        raise BackendUnavailableError(f"The Core ML backend does not run {self.name} packages.")
