"""SSA classifier (semantic- and spatial-adaptive prototypes, cosine logits), written from ``shared/specs/ssa.md``.

SSA replaces a head's final 1×1 classifier: the coarse logits M of that classifier adapt the class
prototypes to the image, in the feature domain (posterior-weighted class means, §4 steps 4–5) and
in the position domain (spatially pooled position features, steps 1–3); every pixel is then
classified by 15 × cosine similarity with the adapted prototypes (steps 6–8).

Its parameters are registered on the head itself (official keys ``get_feat_pos.*``, ``center_pos.weight``,
``center_content_proj.*``, ``center_pos_proj.*``, ``center_proj.weight``). The teacher branch and the
loss buffer exist only for training (§5): they are not built, and :func:`drop_training_only` removes
them from an official checkpoint, saying which keys it dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCALE = 15.0  # cosine-logit temperature of the official code (§4 step 8)
EPS = 1e-12  # added to norms and class masses, not under a square root (§4)
# Official training-only entries (teacher projections, distillation-loss buffer): dropped on load.
TRAINING_ONLY_PREFIXES = ("gt_center_content_proj.", "gt_center_pos_proj.", "gt_center_proj.", "ssa_loss.")


def _two_layer_mlp(channels: int) -> nn.Sequential:
    """Linear(2C -> C/2, no bias) -> ReLU -> Linear(C/2 -> C): the paper's phi_s / phi_p."""
    return nn.Sequential(nn.Linear(2 * channels, channels // 2, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(channels // 2, channels))


class SSAClassifier:
    """Namespace for the SSA parameters and their registration on a head (keys live on the head)."""

    @staticmethod
    def add_to(head: nn.Module, channels: int, num_classes: int) -> None:
        head.get_feat_pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)  # CPVT-style position code
        head.center_pos = nn.Embedding(num_classes, channels)  # used as a plain [K, C] basis, never indexed
        head.center_content_proj = _two_layer_mlp(channels)
        head.center_pos_proj = _two_layer_mlp(channels)
        head.center_proj = nn.Linear(channels, channels, bias=False)


def ssa_logits(head: nn.Module, features: Tensor, coarse: Tensor) -> Tensor:
    """SSA inference (§4): ``features`` F [B,C,H,W] (the head's pre-classifier map), ``coarse`` M = conv_seg(F)."""
    b, c, h, w = features.shape
    k = coarse.shape[1]
    semantic_basis = head.conv_seg.weight.reshape(k, c).expand(b, k, c)  # the fixed prototypes S
    position_basis = head.center_pos.weight.expand(b, k, c)  # P
    pos = head.get_feat_pos(features)  # Pf
    m = coarse.reshape(b, k, h * w)
    flat_pos = pos.reshape(b, c, h * w).transpose(1, 2)
    flat_feat = features.reshape(b, c, h * w).transpose(1, 2)

    # Spatial prototypes: each class's logit map normalised over the image pools the position features.
    pos_centres = torch.bmm(torch.softmax(m, dim=2), flat_pos)
    pos_protos = head.center_pos_proj(torch.cat([position_basis, pos_centres], dim=-1))  # basis first
    # Semantic prototypes: per-pixel class posteriors give each class's weighted mean feature.
    posterior = torch.softmax(m, dim=1)
    sem_centres = torch.bmm(posterior, flat_feat) / (posterior.sum(dim=-1, keepdim=True) + EPS)
    sem_protos = head.center_content_proj(torch.cat([sem_centres, semantic_basis], dim=-1))  # centre first

    protos = head.center_proj(sem_protos + pos_protos)  # [B, K, C]
    pixels = features + pos
    pixels = pixels / (pixels.norm(dim=1, keepdim=True) + EPS)
    protos = protos / (protos.norm(dim=-1, keepdim=True) + EPS)
    return (SCALE * torch.bmm(protos, pixels.reshape(b, c, h * w))).reshape(b, k, h, w)


def drop_training_only(state_dict: dict, prefix: str = "") -> tuple[dict, list[str]]:
    """The state_dict without SSA's training-only entries (under ``prefix``), and the keys dropped."""
    dropped = [k for k in state_dict if k.startswith(tuple(prefix + p for p in TRAINING_ONLY_PREFIXES))]
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}, dropped
