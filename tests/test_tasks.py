"""Every task through the commands a user runs: one model of each task, so that a task gap cannot hide."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PHOTOS, need_shared, tvdeploy
from tinyvim_deploy.tasks import TASK_MODULES, get_task

MODELS = {"classification": "tinyvim-s", "segmentation": "cgrseg-t", "detection": "tinyvim-s-det"}


def test_every_task_has_a_module_and_a_model_here():
    assert set(MODELS) == set(TASK_MODULES)
    for name in TASK_MODULES:
        assert get_task(name).name == name


@pytest.mark.parametrize("task", sorted(MODELS))
def test_predict_and_bench_end_to_end_for_every_task(task, tmp_path):
    need_shared(PHOTOS)
    model, photo = MODELS[task], PHOTOS / "chelsea.png"
    out = tmp_path / "predict.json"
    r = tvdeploy("predict", model, str(photo), "--json", str(out))
    assert r.returncode == 0, r.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert result["source"] == str(photo)
    assert {"classification": "labels", "segmentation": "classes", "detection": "detections"}[task] in result
    # end to end: the task's own preprocessing and postprocessing around the runtime (a segmentor used to get the
    # classification crop and top-k, and fail)
    bench = tmp_path / "bench.json"
    r = tvdeploy("bench", model, "--images", str(photo), "--input-size", "128", "-n", "2", "--warmup", "0",
                 "--batch", "2", "--json", str(bench))
    assert r.returncode == 0, r.stderr
    timing = json.loads(bench.read_text())["result"]
    assert timing["mode"] == "end-to-end" and timing["iterations"] == 2 and set(timing["stages"]) == {
        "preprocess", "inference", "postprocess"}


def test_no_code_outside_tasks_branches_on_a_task_name():
    """The Predictor, export, runtimes, calibration, training and the CLI ask the task; they never compare its name."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    names = set(TASK_MODULES)
    found = []
    for folder in ("tinyvim_deploy", "models", "export", "runtimes", "calibration", "training"):
        for path in (repo / folder).rglob("*.py"):
            if "tasks" in path.relative_to(repo).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Compare) and any(
                        isinstance(c, ast.Constant) and c.value in names for c in [node.left, *node.comparators]):
                    found.append(f"{path.relative_to(repo)}:{node.lineno}")
    assert not found, found


def test_eval_scores_a_classifier_on_class_subfolders(tmp_path):
    """eval's top-1 accuracy equals the Predictor's own answers on the same labelled folder."""
    import shutil

    import torch

    import tinyvim_deploy as tv

    need_shared(PHOTOS)
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg"))[:4]
    data = tmp_path / "data"
    labels = {}
    for i, photo in enumerate(photos):
        folder = data / f"class{i % 2}"  # sorted folder names are the class indices (ImageFolder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
        labels[photo.name] = i % 2
    weights = tmp_path / "w.pth"
    torch.save({"model": tv.create_model("tinyvim-s").state_dict()}, weights)
    out = tmp_path / "eval.json"
    r = tvdeploy("eval", "tinyvim-s", "--data", str(data), "--weights", str(weights), "--input-size", "64",
                 "--json", str(out))
    assert r.returncode == 0, r.stderr
    metrics = json.loads(out.read_text())
    predictor = tv.Predictor("tinyvim-s", weights=weights, input_size="64", topk=1)
    expected = sum(predictor(path).indices[0] == labels[path.name] for path in data.rglob("*.*")) / len(photos)
    assert metrics["images"] == len(photos) and metrics["top1"] == pytest.approx(expected)
    assert metrics["top5"] >= metrics["top1"]


def test_validation_matches_outputs_by_name_not_position():
    import numpy as np

    from tinyvim_deploy.export.validate import by_name

    boxes, scores = np.zeros((1, 4)), np.ones((1, 2))
    assert [a is b for a, b in zip(by_name(["boxes", "scores"], ["scores", "boxes"], [scores, boxes]),
                                   [boxes, scores])] == [True, True]
    assert by_name(["logits"], ["labels"], [scores])[0] is scores  # renamed output: by position
