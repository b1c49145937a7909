"""A small, seeded supervised training loop (AdamW, cosine schedule, label smoothing).

Used to give INT8 calibration a *trained* model to be honest about (random weights say nothing
about quantization error), and by the DRKD distillation later. CPU-friendly; a GPU makes it minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def _logits(output) -> torch.Tensor:
    if isinstance(output, tuple):  # TinyViM with a distillation head returns (head, dist) in training
        return sum(output) / len(output)
    return output


def train_classifier(
    model: nn.Module, tensors: np.ndarray, labels: np.ndarray, *, epochs: int = 10, batch_size: int = 32,
    lr: float = 2e-3, weight_decay: float = 0.05, label_smoothing: float = 0.0, seed: int = 0,
    device: str = "cpu", progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place on preprocessed N×3×H×W tensors; return the mean loss of each epoch."""
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def batch_loss(x: torch.Tensor, y: torch.Tensor, flip: bool) -> torch.Tensor:
        return loss_fn(_logits(model(x.flip(3) if flip else x)), y)  # every class is flip-invariant

    return _fit(model, tensors, labels, batch_loss, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, seed=seed, device=device, progress=progress)


def train_synthetic_classifier(model_name: str = "tinyvim-s", *, per_class: int = 100, epochs: int = 6,
                               size: int = 128, seed: int = 0, lr: float = 3e-3, device: str = "cpu",
                               progress: Callable[[int, float], None] | None = None):
    """A model trained on the seeded shapes-and-textures set (``training.synthetic``), ready to export.

    Images go through the model's own preprocessing at ``size``, as they will at inference.
    Returns (model, loss history).
    """
    from tinyvim_deploy.models import create_model
    from tinyvim_deploy.preprocess import preprocess
    from tinyvim_deploy.training.synthetic import CLASSES, make_dataset

    torch.manual_seed(seed)  # the initialisation too: without it two runs of one seed train different models
    model = create_model(model_name, num_classes=len(CLASSES))
    spec = model.spec
    images, labels = make_dataset(per_class, size=size, seed=seed)
    tensors = preprocess(list(images), (size, size), crop_pct=spec.crop_pct, interpolation=spec.interpolation,
                         mean=spec.mean, std=spec.std)
    history = train_classifier(model, tensors, labels, epochs=epochs, lr=lr, seed=seed, device=device,
                               progress=progress)
    return model.cpu(), history


def train_segmenter(
    model: nn.Module, tensors: np.ndarray, labels: np.ndarray, *, epochs: int = 10, batch_size: int = 8,
    lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0, device: str = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train a segmentor in place on N×3×H×W tensors and N×H×W labels (255 ignored); mean loss per epoch.

    The logits (at 1/output_stride) are resized to the labels bilinearly, as mmseg's decode-head loss does.
    """
    import torch.nn.functional as F

    loss_fn = nn.CrossEntropyLoss(ignore_index=255)

    def batch_loss(x: torch.Tensor, y: torch.Tensor, flip: bool) -> torch.Tensor:
        if flip:  # image and labels together
            x, y = x.flip(3), y.flip(2)
        logits = F.interpolate(model(x), size=y.shape[1:], mode="bilinear", align_corners=False)
        return loss_fn(logits, y)

    return _fit(model, tensors, labels.astype(np.int64), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, seed=seed, device=device, progress=progress)


def _fit(model: nn.Module, tensors: np.ndarray, labels: np.ndarray,
         batch_loss: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], *, epochs: int, batch_size: int,
         lr: float, weight_decay: float, seed: int, device: str,
         progress: Callable[[int, float], None] | None) -> list[float]:
    """AdamW with linear warm-up then cosine decay, seeded shuffling and random horizontal flips."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(tensors) / batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    x_all, y_all = torch.from_numpy(tensors), torch.from_numpy(labels)
    history = []
    for epoch in range(epochs):
        order = torch.from_numpy(rng.permutation(len(tensors)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = batch_loss(x_all[idx].to(device), y_all[idx].to(device), bool(rng.random() < 0.5))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(tensors))
        if progress:
            progress(epoch, history[-1])
    model.eval()
    return history
