"""``tvdeploy train`` and ``tvdeploy distill`` (one command, two names): detectors on a COCO folder or the
synthetic ShapesDet set.

Both write into ``--output`` (default ``runs/<student>-<method>``): ``last.ckpt`` during training (atomic, the
resume point; its ``model`` entry is the plain detector, so export can load it too) and ``<model>.pth`` at the
end, then print COCO AP on the validation images. Under ``torchrun --nproc_per_node N`` the same command trains
data-parallel (DDP); only rank 0 writes and prints.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, progress_bar
from tinyvim_deploy.errors import ArtifactError, DatasetError
from tinyvim_deploy.training import SYNTHETIC


class TrainMethod(str, enum.Enum):
    none = "none"  # no distillation
    fitnet = "fitnet"  # plain FPN mimicry
    drkd = "drkd"  # relation distillation


def _build_student(name: str, num_classes: int, seed: int):
    import torch

    from tinyvim_deploy.models import create_model, get_spec
    from tinyvim_deploy.tasks import get_task

    spec = get_spec(name)
    if not get_task(spec.task).trainable:
        raise ArtifactError(f"{name} is a {spec.task} model; train/distill build detectors (tinyvim-s-det, ...).")
    torch.manual_seed(seed)  # --seed promises the initialisation too
    return spec, create_model(name, num_classes=num_classes)


def _load_teacher(path: Path, name: str | None, num_classes: int):
    import torch

    from tinyvim_deploy.models import create_model
    from tinyvim_deploy.models.checkpoint import load_checkpoint

    raw = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    name = name or (raw.get("model_name") if isinstance(raw, dict) else None) or "tinyvim-b-det"
    teacher = create_model(name, num_classes=num_classes)
    state = load_checkpoint(path).state_dict  # a clear CheckpointError for missing or unreadable files
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path} does not fit {name} with {num_classes} classes: "
                            f"{str(exc).splitlines()[0]} (pass --teacher-model)") from exc
    return name, teacher


def _run(model: str, data: str, val_data: str | None, method: str, teacher_path: Path | None,
         teacher_model: str | None, images: int, val_images: int, input_size: int, epochs: int, batch: int,
         lr: float, seed: int, data_seed: int, kd_weights: str | None, freeze_bn: bool, output: Path | None,
         resume: bool, device: str, checkpoint_every: int) -> None:
    import torch

    from tinyvim_deploy.fileio import atomic_output
    from tinyvim_deploy.training.detect import (
        DetectionTrainConfig,
        distributed_context,
        evaluate_detector,
        prepare_samples,
        train_detector,
    )
    from tinyvim_deploy.training.shapesdet import load_detection_data

    rank, world = distributed_context()
    train_data = load_detection_data(data, "train", images, input_size, data_seed)
    val_source = val_data or (data if data.startswith("synthetic:") else None)
    val = load_detection_data(val_source, "val", val_images, input_size, data_seed) if val_source else None
    num_classes = len(train_data.class_names)
    spec, student = _build_student(model, num_classes, seed)
    teacher = None
    if method != "none":
        if teacher_path is None:
            raise ArtifactError(f"--method {method} needs --teacher T.pth (train one with `tvdeploy train`).")
        teacher_model, teacher = _load_teacher(teacher_path, teacher_model, num_classes)
    weights = None
    if kd_weights:
        try:
            weights = tuple(float(v) for v in kd_weights.split(","))
        except ValueError:
            raise DatasetError(f"--kd-weights takes comma-separated numbers, got {kd_weights!r}.") from None
    try:
        config = DetectionTrainConfig(epochs=epochs, batch_size=batch, lr=lr, seed=seed, method=method,
                                      kd_weights=weights, freeze_bn=freeze_bn, checkpoint_every=checkpoint_every)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    output = output or Path("runs") / f"{model}-{method}"
    checkpoint = output / "last.ckpt"
    if checkpoint.exists() and not resume:
        raise ArtifactError(f"{checkpoint} exists: pass --resume to continue it, or another --output.")
    samples = prepare_samples(train_data, input_size, spec.mean, spec.std)
    if rank == 0:
        what = f"{model} ({method}{f', teacher {teacher_model}' if teacher is not None else ''})"
        console.print(f"training {what} on {len(samples)} images of {data} at {input_size}², "
                      f"{epochs} epochs, batch {batch}{f' over {world} processes' if world > 1 else ''}")
    with progress_bar() as progress:
        tick = progress(model, "training") if rank == 0 else None
        result = train_detector(student, samples, config, teacher=teacher, checkpoint=checkpoint, resume=resume,
                                device=device, model_name=model,
                                progress=(lambda step, total, _: tick(step, total)) if tick else None)
    if rank != 0:
        return
    final = output / f"{model}.pth"
    with atomic_output(final) as tmp:
        torch.save({"model": result.student.state_dict(), "model_name": model,
                    "classes": list(train_data.class_names), "config": dataclasses.asdict(config),
                    "kd_weights": list(result.kd_weights) if result.kd_weights else None}, tmp)
    last = result.history[-1] if result.history else {}
    console.print("last epoch's mean losses: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in last.items()))
    if result.kd_weights:
        console.print("distillation weights (calibrated at step 0 unless given): "
                      + ", ".join(f"{w:.4g}" for w in result.kd_weights))
    if val is not None and len(val):
        metrics = evaluate_detector(result.student.to("cpu"), val, input_size, spec.mean, spec.std)
        console.print(f"COCO metrics on {len(val)} validation images:")
        for row in metrics.table():
            console.print("  " + row, highlight=False)
    console.print(f"wrote {final} (and the resume point {checkpoint})")


_DATA_HELP = f"A COCO folder (annotations.json + images/) or {SYNTHETIC}[:iid|context]."


def train_cmd(
    model: str | None = typer.Option(None, "--model", "--student", "-m",
                                     help="The detector to train (default: tinyvim-b-det for train, the teacher; "
                                          "tinyvim-s-det for distill, the student)."),
    teacher: Path | None = typer.Option(None, "--teacher", help="distill: the trained teacher's weights."),
    method: TrainMethod | None = typer.Option(None, "--method", case_sensitive=False,
                                              help="drkd: relation distillation (distill's default); fitnet: plain "
                                                   "FPN mimicry; none: no distillation (train's default)."),
    teacher_model: str | None = typer.Option(None, "--teacher-model",
                                             help="The teacher's model name (default: read from its file)."),
    kd_weights: str | None = typer.Option(None, "--kd-weights",
                                          help="drkd: λ_PR,λ_IR,λ_INS; fitnet: λ (default: calibrated at step 0)."),
    data: str = typer.Option(SYNTHETIC, "--data", help=_DATA_HELP),
    val_data: str | None = typer.Option(None, "--val-data", help="Validation COCO folder (synthetic: its val split)."),
    images: int = typer.Option(400, "--images", help="Synthetic: training images."),
    val_images: int = typer.Option(200, "--val-images", help="Synthetic: validation images."),
    input_size: int = typer.Option(128, "--input-size", help="Square letterboxed input side (multiple of 32)."),
    epochs: int = typer.Option(12, "--epochs"),
    batch: int = typer.Option(8, "--batch", help="Global batch size (split over torchrun processes)."),
    lr: float = typer.Option(1e-3, "--lr"),
    seed: int = typer.Option(0, "--seed", help="Initialisation, data order and flips."),
    data_seed: int = typer.Option(0, "--data-seed", help="Synthetic: which images."),
    freeze_bn: bool = typer.Option(False, "--freeze-bn", help="BatchNorm keeps its running statistics."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Run folder (default runs/MODEL-METHOD)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/last.ckpt."),
    device: str = typer.Option("cpu", "--device"),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Steps between checkpoints (0: per epoch)."),
) -> None:
    """Train a detector: from scratch (`train`), or distilled from a frozen teacher (`distill --teacher T.pth`)."""
    distilling = teacher is not None
    chosen = method.value if method else ("drkd" if distilling else "none")
    model = model or ("tinyvim-s-det" if distilling else "tinyvim-b-det")
    _run(model, data, val_data, chosen, teacher, teacher_model, images, val_images, input_size, epochs, batch, lr,
         seed, data_seed, kd_weights, freeze_bn, output, resume, device, checkpoint_every)
