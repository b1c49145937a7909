"""Detector training and distillation mechanics (drkd.md §7.5 CI list): resume, DDP, teacher, DRKD terms fall.

Micro models (tests/detection_micro.py) on 96² ShapesDet images keep the whole file to seconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.detection_micro import micro_detector, micro_samples
from tinyvim_deploy.errors import CheckpointError
from tinyvim_deploy.training.detect import (
    DetectionObjective,
    DetectionTrainConfig,
    load_training_checkpoint,
    train_detector,
)

HERE = os.path.dirname(__file__)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_resume_from_an_interrupted_run_gives_the_same_weights(tmp_path):
    samples, teacher = micro_samples(8), micro_detector(32, 2, seed=1)
    config = DetectionTrainConfig(epochs=2, batch_size=4, warmup_steps=2, method="drkd")  # 4 steps
    full = train_detector(micro_detector(), samples, config, teacher=teacher)

    ckpt = tmp_path / "last.ckpt"
    first = train_detector(micro_detector(), samples, config, teacher=teacher, checkpoint=ckpt, stop_after=3)
    assert first.steps == 3 and load_training_checkpoint(ckpt)["step"] == 3  # stopped mid-epoch 2
    resumed = train_detector(micro_detector(seed=5), samples, config, teacher=teacher, checkpoint=ckpt, resume=True)
    assert resumed.steps == 4 and resumed.kd_weights == full.kd_weights
    assert _max_diff(full.student.state_dict(), resumed.student.state_dict()) == 0.0
    assert _max_diff(full.helpers.state_dict(), resumed.helpers.state_dict()) == 0.0
    assert resumed.history == full.history

    state = load_training_checkpoint(ckpt)  # the plain student under "model": what export loads strictly
    micro_detector().load_state_dict(state["model"], strict=True)
    assert state["drkd"] and not any(k.startswith(("student_", "teacher_")) for k in state["model"])


def test_a_file_that_is_not_a_training_checkpoint_is_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a tinyvim-deploy detector training checkpoint"):
        load_training_checkpoint(tmp_path / "x.pth")


@pytest.mark.parametrize("method", ["fitnet", "drkd"])
def test_the_teacher_never_changes_and_gets_no_gradient(method):
    teacher = micro_detector(32, 2, seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BN running stats included
    result = train_detector(micro_detector(), micro_samples(8), DetectionTrainConfig(epochs=1, batch_size=4,
                            method=method), teacher=teacher)
    assert not teacher.training and _max_diff(before, teacher.state_dict()) == 0.0
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert result.helpers is not None and all(p.grad is not None for p in result.helpers.parameters()
                                              if p.requires_grad and p.dim() > 1 and "relation" not in str(p.shape))


def test_drkd_terms_fall_on_a_tiny_run():
    """40 steps of S_drkd from the calibrated start: each DRKD term on a fixed batch ends below 0.7× its start."""
    samples, teacher = micro_samples(16), micro_detector(32, 2, seed=1)
    images, boxes, labels = samples.images[:4], samples.boxes[:4], samples.labels[:4]
    config = DetectionTrainConfig(epochs=10, batch_size=4, warmup_steps=5, lr=2e-3, method="drkd")

    def terms(result) -> dict[str, float]:
        objective = DetectionObjective(result.student, result.helpers).train()  # as in training: batch statistics
        with torch.no_grad():
            losses = objective(images, boxes, labels, teacher.features(images))
        return {k: v.item() for k, v in losses.items() if "drkd" in k}

    start = terms(train_detector(micro_detector(), samples, DetectionTrainConfig(
        epochs=1, batch_size=4, method="drkd", lr=1e-12), teacher=teacher))  # ≈ the initial modules
    end = terms(train_detector(micro_detector(), samples, config, teacher=teacher))
    assert all(torch.isfinite(torch.tensor(v)) for v in {**start, **end}.values())
    for k in start:
        assert end[k] < 0.7 * start[k], (k, start[k], end[k])


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    """torchrun + DDP (gloo) with 2 processes × 2 images equals 1 process × 4 images (BN frozen: see detect.py)."""
    script = os.path.join(HERE, "detection_micro.py")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, script, str(one)], check=True, env=env, timeout=300)
    with socket.socket() as probe:  # a free port: CI may run other jobs on this machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port), script, str(two)], env=env,
                         timeout=300,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    init = micro_detector().state_dict()
    assert _max_diff(a, init) > 1e-3  # the runs really trained...
    assert _max_diff(a, b) < 1e-5  # ...and the same way


def test_seed_fixes_the_student_initialisation():
    """`tvdeploy train/distill --seed` promises the initialisation: same seed, same student."""
    from tinyvim_deploy.cli.train import _build_student

    first, again, other = (_build_student("tinyvim-s-det", 3, seed)[1].state_dict() for seed in (5, 5, 6))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
