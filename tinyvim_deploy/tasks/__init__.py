"""One module per task: what a classifier, a segmentor and a detector each do around their network.

``get_task(spec.task)`` gives the task's :class:`~tinyvim_deploy.tasks.base.Task`; the Predictor, export
validation, calibration, profiling, the torch backend and the CLI ask it instead of branching on the
task's name. A new task is one new module here and one line in :data:`TASK_MODULES`.
:mod:`tinyvim_deploy.tasks.nms` is the detection task's reference NMS.
"""

from __future__ import annotations

import importlib

from tinyvim_deploy.errors import ArtifactError
from tinyvim_deploy.tasks.base import Task

# task name -> module whose ``TASK`` is its Task (imported on first use: the modules pull in OpenCV/torch).
TASK_MODULES = {
    "classification": "tinyvim_deploy.tasks.classification",
    "segmentation": "tinyvim_deploy.tasks.segmentation",
    "detection": "tinyvim_deploy.tasks.detection",
}


def get_task(name: str) -> Task:
    """The task called ``name`` (a spec's ``task`` field)."""
    if name not in TASK_MODULES:
        raise ArtifactError(f"Unknown task {name!r}: tinyvim-deploy runs {', '.join(TASK_MODULES)}.")
    return importlib.import_module(TASK_MODULES[name]).TASK


__all__ = ["TASK_MODULES", "Task", "get_task"]
