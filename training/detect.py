"""Detector training and distillation: plain (``none``), FitNet-style mimicry (``fitnet``) and DRKD (``drkd``).

The recipe is ``shared/specs/drkd.md`` §7.5's (AdamW lr 1e-3, wd 0.05, linear warm-up then cosine, from
scratch) with the §6 choices of :mod:`tinyvim_deploy.training.drkd`. What a user gets from it:

- **resumable**: a checkpoint (student weights under ``model``, helper modules under ``drkd``, optimiser,
  step, torch RNG state) is written atomically at the end of every epoch (or every ``checkpoint_every``
  steps). The data order and flips are a pure function of (seed, epoch, step), so resuming from any
  checkpoint gives the same weights as the uninterrupted run;
- **data parallel** through PyTorch's own engine: under ``torchrun`` each process takes its slice of every
  global batch, DDP averages the gradients and the loss normalisers are averaged across processes, so W
  processes train like one process with the whole batch (gloo on CPU, nccl on GPU; BatchNorm is synchronised
  on GPU; on CPU, where SyncBatchNorm does not run, statistics stay per process unless ``freeze_bn``);
- **exportable**: the checkpoint's ``model`` entry is the plain student state_dict, so ``tvdeploy export
  --weights`` loads it strictly and no DRKD module can reach an exported graph (§6.13).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvim_deploy.errors import CheckpointError, DatasetError
from tinyvim_deploy.fileio import atomic_output
from tinyvim_deploy.models.detection import TinyViMDetector
from tinyvim_deploy.training.drkd import DRKDConfig, DRKDHelpers
from tinyvim_deploy.training.losses import detection_loss

METHODS = ("none", "fitnet", "drkd")
CHECKPOINT_FORMAT = "tinyvim-deploy/detector-train-v1"


@dataclasses.dataclass(frozen=True)
class DetectionTrainConfig:
    """One training run. ``kd_weights`` None: calibrated on the first batch (drkd.md §6.2), then frozen."""

    epochs: int = 12
    batch_size: int = 8  # the global batch, whatever the number of processes
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 0
    hflip: bool = True
    freeze_bn: bool = False  # BatchNorm uses its running statistics (mmdet's norm_eval) and does not update them
    method: str = "none"
    kd_weights: tuple[float, ...] | None = None  # drkd: (λ_PR, λ_IR, λ_INS); fitnet: (λ,)
    kd_fraction: float = 0.3  # §6.2: each DRKD term ≈ this fraction of the detection loss at step 0
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of every epoch

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


# --------------------------------------------------------------------------------------------------
# Data: images letterboxed to the input size once, boxes in input pixels
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DetectionSamples:
    images: Tensor  # [n, 3, S, S] normalised
    boxes: list[Tensor]  # [n_i, 4] x1y1x2y2 in input pixels
    labels: list[Tensor]  # [n_i] int64
    scales: list[float]  # input pixels per original pixel (un-letterboxing divides by it)

    def __len__(self) -> int:
        return len(self.boxes)


def prepare_samples(data, size: int, mean: Sequence[float], std: Sequence[float]) -> DetectionSamples:
    """A :class:`~tinyvim_deploy.training.shapesdet.DetectionData` -> network inputs, like the Predictor's."""
    from tinyvim_deploy.tasks.detection import letterbox_batch

    if len(data) == 0:
        raise DatasetError("The detection data set is empty.")
    images, scales = letterbox_batch(data.images, size, mean, std)
    boxes = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4) * s) for b, s in zip(data.boxes, scales)]
    labels = [torch.as_tensor(np.asarray(lab, np.int64).reshape(-1)) for lab in data.labels]
    return DetectionSamples(torch.from_numpy(images), boxes, labels, scales)


def batch_plan(n: int, config: DetectionTrainConfig, epoch: int) -> tuple[Tensor, Tensor]:
    """(image order, horizontal-flip flags) of one epoch: a pure function of (seed, epoch), so resumable."""
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return order, flips & config.hflip


def _flip(images: Tensor, boxes: list[Tensor], flags: Tensor) -> tuple[Tensor, list[Tensor]]:
    width = images.shape[-1]
    images = torch.where(flags.view(-1, 1, 1, 1), images.flip(-1), images)
    out = []
    for b, flip in zip(boxes, flags.tolist()):
        out.append(torch.stack((width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]), dim=1) if flip else b)
    return images, out


# --------------------------------------------------------------------------------------------------
# The objective: student (+ helper modules) in one module, so DDP sees every trainable parameter
# --------------------------------------------------------------------------------------------------


class FitNetHelpers(nn.Module):
    """The honest control of §7.5: per-level 1×1 adapters and plain FPN feature MSE (no relations)."""

    def __init__(self, student_channels: int, teacher_channels: int, levels: int):
        super().__init__()
        self.adapters = nn.ModuleList(nn.Conv2d(student_channels, teacher_channels, 1) for _ in range(levels))
        self.weight = 1.0

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], gt_boxes=None) -> dict[str, Tensor]:
        terms = [F.mse_loss(a(fs), ft.detach()) for a, fs, ft in zip(self.adapters, student_feats, teacher_feats)]
        return {"loss_fitnet": self.weight * torch.stack(terms).mean()}


def drkd_config_for(student: TinyViMDetector, teacher: TinyViMDetector, input_size: int) -> DRKDConfig:
    """§6.4/§6.12 sizes for this pair: N = C_t/4 nodes on P3/P4, 16 on P5, never more than half a level's pixels."""
    ct = teacher.config.channels
    pixels = [(input_size // s) ** 2 for s in student.strides]
    nodes = tuple(max(1, min(ct // 4 if i < 2 else 16, p // 2)) for i, p in enumerate(pixels))
    return DRKDConfig(student_channels=student.config.channels, teacher_channels=ct, glore_nodes=nodes,
                      roi_strides=tuple(student.strides[:2]))


class DetectionObjective(nn.Module):
    """forward(images, boxes, labels, teacher_feats) -> named loss terms (their sum is what is minimised)."""

    def __init__(self, student: TinyViMDetector, helpers: nn.Module | None,
                 reduce_mean: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.student, self.helpers = student, helpers
        self.reduce_mean = reduce_mean

    def forward(self, images: Tensor, boxes: list[Tensor], labels: list[Tensor],
                teacher_feats: list[Tensor] | None = None) -> dict[str, Tensor]:
        feats = self.student.features(images)
        cls, box, ctr = self.student.head(feats)
        det = detection_loss(cls, box, ctr, self.student.strides, boxes, labels, reduce_mean=self.reduce_mean)
        losses = {f"loss_{k}": v for k, v in det.items()}
        if self.helpers is not None and teacher_feats is not None:
            kd = self.helpers(feats, teacher_feats, boxes)
            losses.update(kd if isinstance(kd, dict) else kd.losses())
        return losses


def _set_train_mode(module: nn.Module, freeze_bn: bool) -> None:
    module.train()
    if freeze_bn:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


@torch.no_grad()
def calibrate_kd_weights(objective: DetectionObjective, teacher: TinyViMDetector, images: Tensor,
                         boxes: list[Tensor], labels: list[Tensor], fraction: float) -> tuple[float, ...]:
    """§6.2: weights that make each DRKD term ``fraction`` of the detection loss on this batch (FitNet: their sum).

    Computed once (the benchmark does it on seed 0 and freezes the values for every seed).
    """
    helpers = objective.helpers
    losses = objective(images, boxes, labels, teacher.features(images))
    det = sum(v for k, v in losses.items() if k in ("loss_cls", "loss_box", "loss_centerness")).item()
    if isinstance(helpers, DRKDHelpers):
        terms = [losses[k].item() for k in ("loss_drkd_pr", "loss_drkd_ir", "loss_drkd_ins")]
        return tuple(fraction * det / t if t > 0 else 0.0 for t in terms)
    term = losses["loss_fitnet"].item()
    return (3 * fraction * det / term if term > 0 else 0.0,)  # matched to DRKD's total (three terms)


def apply_kd_weights(helpers: nn.Module, weights: Sequence[float]) -> None:
    if isinstance(helpers, DRKDHelpers):
        helpers.config = dataclasses.replace(helpers.config, weights=tuple(float(w) for w in weights))
    elif isinstance(helpers, FitNetHelpers):
        helpers.weight = float(weights[0])


# --------------------------------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)
# --------------------------------------------------------------------------------------------------


def distributed_context() -> tuple[int, int]:
    """(rank, world size), initialising the default process group when launched by torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_mean(t: Tensor) -> Tensor:
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    student: TinyViMDetector
    helpers: nn.Module | None
    kd_weights: tuple[float, ...] | None
    history: list[dict[str, float]]  # mean of each loss term per epoch
    steps: int


ProgressFn = Callable[[int, int, dict[str, float]], None]


def train_detector(student: TinyViMDetector, samples: DetectionSamples, config: DetectionTrainConfig, *,
                   teacher: TinyViMDetector | None = None, checkpoint: str | os.PathLike | None = None,
                   resume: bool = False, device: str = "cpu", stop_after: int | None = None,
                   progress: ProgressFn | None = None, model_name: str = "") -> TrainResult:
    """Train ``student`` on ``samples`` (distilling from ``teacher`` for fitnet/drkd) and return it in eval mode.

    ``checkpoint``: the file written atomically during training and read back by ``resume=True``.
    ``stop_after``: end after this many optimiser steps in total (simulates an interruption in tests).
    """
    rank, world = distributed_context()
    if config.batch_size % world:
        raise ValueError(f"the global batch ({config.batch_size}) must divide evenly over {world} processes")
    if config.method != "none" and teacher is None:
        raise ValueError(f"method {config.method!r} needs a teacher")
    torch.manual_seed(config.seed)  # the helper modules' init (the student is built by the caller)
    size = samples.images.shape[-1]
    helpers: nn.Module | None = None
    if config.method == "drkd":
        helpers = DRKDHelpers(drkd_config_for(student, teacher, size))
    elif config.method == "fitnet":
        helpers = FitNetHelpers(student.config.channels, teacher.config.channels, len(student.strides))
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)  # §6.11: frozen, BN in eval mode
    objective = DetectionObjective(student, helpers, _all_reduce_mean if world > 1 else None).to(device)
    if world > 1 and device.startswith("cuda"):
        objective = nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    trainable = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(samples) // config.batch_size
    if steps_per_epoch == 0:
        raise DatasetError(f"{len(samples)} images are fewer than one batch of {config.batch_size}.")
    total_steps = config.epochs * steps_per_epoch
    warmup = max(1, min(config.warmup_steps, total_steps // 5))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    step, kd_weights, history, sums = 0, config.kd_weights, [], {}
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_training_checkpoint(checkpoint)
        student.load_state_dict(state["model"])
        if helpers is not None:
            helpers.load_state_dict(state["drkd"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history, sums = int(state["step"]), list(state["history"]), dict(state["sums"])
        kd_weights = tuple(state["kd_weights"]) if state["kd_weights"] is not None else None
        torch.set_rng_state(state["rng"])
    if helpers is not None:
        if kd_weights is None:  # first batch of epoch 0, before any update, same on every process
            order, flips = batch_plan(len(samples), config, 0)
            idx = order[: config.batch_size]
            images, boxes = _flip(samples.images[idx], [samples.boxes[i] for i in idx], flips[idx])
            _set_train_mode(objective, config.freeze_bn)
            with torch.random.fork_rng():  # on a copy: the pass must not move BatchNorm statistics
                kd_weights = calibrate_kd_weights(copy.deepcopy(objective), teacher, images.to(device),
                                                  [b.to(device) for b in boxes],
                                                  [samples.labels[i].to(device) for i in idx], config.kd_fraction)
        apply_kd_weights(helpers, kd_weights)
    model: nn.Module = objective
    if world > 1:
        # unused parameters: stage 1's output BN (the FPN starts at stride 8) and, for DRKD, relation modules of
        # levels where a batch has fewer than two GT boxes. Buffers are synced once at init (all ranks start
        # equal) and not on every forward: each process keeps its own BatchNorm statistics, as documented.
        model = nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True, forward_sync_buffers=False)
    local = config.batch_size // world
    end = total_steps if stop_after is None else min(total_steps, stop_after)
    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        order, flips = batch_plan(len(samples), config, epoch)
        _set_train_mode(model, config.freeze_bn)
        start = offset * config.batch_size + rank * local
        idx = order[start:start + local]
        images, boxes = _flip(samples.images[idx], [samples.boxes[i] for i in idx], flips[idx])
        images, boxes = images.to(device), [b.to(device) for b in boxes]
        labels = [samples.labels[i].to(device) for i in idx]
        teacher_feats = None
        if teacher is not None:
            with torch.no_grad():
                teacher_feats = teacher.features(images)
        losses = model(images, boxes, labels, teacher_feats)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        if progress is not None:
            progress(step, total_steps, {k: v.item() for k, v in losses.items()})
        epoch_done = step % steps_per_epoch == 0
        if epoch_done:
            history.append({k: v / steps_per_epoch for k, v in sums.items()})
            sums = {}
        due = config.checkpoint_every and step % config.checkpoint_every == 0
        if checkpoint is not None and rank == 0 and (epoch_done or due or step == end):
            save_training_checkpoint(checkpoint, student, helpers, optimizer, scheduler, step, history, sums,
                                     kd_weights, config, model_name)
    student.eval()
    return TrainResult(student, helpers, kd_weights, history, step)


def save_training_checkpoint(path, student, helpers, optimizer, scheduler, step, history, sums, kd_weights,
                             config, model_name: str) -> None:
    """Atomically: ``model`` (the plain student, what export loads), ``drkd`` (helpers), and the resume state."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "model": student.state_dict(),
        "drkd": helpers.state_dict() if helpers is not None else {},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "history": history,
        "sums": sums,  # the current epoch's running loss sums
        "kd_weights": list(kd_weights) if kd_weights is not None else None,
        "config": dataclasses.asdict(config),
        "rng": torch.get_rng_state(),
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"Cannot read the training checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a tinyvim-deploy detector training checkpoint.")
    return state


# --------------------------------------------------------------------------------------------------
# Evaluation of a PyTorch detector (exported artifacts go through the Predictor: ``tvdeploy eval``)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_detector(detector: nn.Module, data, size: int, mean: Sequence[float], std: Sequence[float], *,
                      batch_size: int = 16, score_threshold: float = 0.05, iou_threshold: float = 0.6,
                      max_det: int = 100):
    """COCO AP of ``detector`` on a DetectionData (letterboxed like training, boxes mapped back to the image)."""
    from tinyvim_deploy.models.detection import DetectorWithNMS
    from tinyvim_deploy.tasks.detection import coco_metrics, unletterbox_boxes

    samples = prepare_samples(data, size, mean, std)
    reference = DetectorWithNMS(detector.eval(), score_threshold, iou_threshold, max_det)
    found = []
    for start in range(0, len(samples), batch_size):
        out = reference(samples.images[start:start + batch_size])
        for j in range(out.num_dets.shape[0]):
            i, k = start + j, int(out.num_dets[j, 0])
            boxes = unletterbox_boxes(out.boxes[j, :k].numpy(), samples.scales[i], data.images[i].shape[:2])
            found.append((boxes, out.scores[j, :k].numpy(), out.classes[j, :k].numpy()))
    return coco_metrics(data, found)
