"""``create_model``: registry lookup + checkpoint loading, returning an eval-mode model."""

from __future__ import annotations

import dataclasses
import os

from torch import nn

from tinyvim_deploy.errors import CheckpointError
from tinyvim_deploy.models.checkpoint import Checkpoint, load_checkpoint, load_weights
from tinyvim_deploy.models.registry import get_constructor, get_spec

# The weight whose first dimension is the class count, per task (a checkpoint's head sets num_classes).
CLASSIFIER_KEYS = {"classification": "head.weight", "segmentation": "decode_head.conv_seg.weight",
                   "detection": "head.cls_logits.weight"}


def create_model(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    use_ema: bool = False,
) -> nn.Module:
    """Build a registered model in eval mode, optionally loading a checkpoint strictly.

    ``num_classes`` defaults to the checkpoint's head size (or the spec's). The returned module
    carries ``model.spec`` (a :class:`ModelSpec` with the effective class count) and
    ``model.checkpoint`` (the :class:`Checkpoint` it was loaded from, or ``None``).
    """
    spec = get_spec(name)
    checkpoint: Checkpoint | None = load_checkpoint(weights, use_ema=use_ema) if weights is not None else None
    distillation = True
    if checkpoint is not None and not features_only:
        head = checkpoint.state_dict.get(CLASSIFIER_KEYS.get(spec.task, ""))
        if head is not None and head.ndim in (2, 4):  # a Linear head, or a segmentor's 1x1 conv_seg
            if num_classes is not None and num_classes != head.shape[0]:
                raise CheckpointError(
                    f"Checkpoint {checkpoint.path} has a {head.shape[0]}-class head but num_classes={num_classes} "
                    "was requested."
                )
            num_classes = head.shape[0]
            distillation = "dist_head.weight" in checkpoint.state_dict
    num_classes = spec.num_classes if num_classes is None else num_classes
    model = get_constructor(spec.name)(num_classes=num_classes, features_only=features_only, distillation=distillation)
    if checkpoint is not None:
        load_weights(model, checkpoint, spec.name)
    model.spec = dataclasses.replace(spec, num_classes=num_classes, task="features" if features_only else spec.task)
    model.checkpoint = checkpoint
    return model.eval()
