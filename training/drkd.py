"""DRKD (Dual Relation Knowledge Distillation) helper modules and losses, written from ``shared/specs/drkd.md``.

DRKD distils FPN features (§1) with three terms:
- PR, pixel-wise relation (§2): each level of student and teacher goes through its own GloRe graph unit; the
  student's relation-enhanced map (through a 1×1 adapter) is matched to the teacher's;
- IR, instance-wise relation (§3): RoIAlign features of the GT boxes on the two finest levels are enhanced by an
  instance×instance relation (embedded Gaussian, re-weighted by a relation filter) and matched;
- INS, instance features (§3): the same RoI features matched directly.

All helper modules are training-only and use the official attribute names (``student_non_local``,
``teacher_non_local``, ``non_local_adaptation``, ``student_relation``, ``teacher_relation``,
``relation_adaptation``, ``for_adaptation``), so the official two-stage checkpoint's helpers load with
``strict=True`` into ``DRKDHelpers(official_quirks=True)``.

Defaults are our corrected choices of §6; :meth:`DRKDConfig.official` (or ``official_quirks=True``) selects the
released code's behaviour, bug for bug where the fidelity fixture needs it (``shared/fixtures/drkd/README.md``):
Frobenius-norm sums with the official weights, no logit scaling, a fresh random relation filter per call, RoIAlign
with ``aligned=False`` and adaptive sampling, every image's boxes pooled from image 0, and a crash on images
without GT. RoIAlign is a pure-PyTorch transcription of torchvision's CPU kernel (no torchvision dependency).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Weights of the released two-stage code (§1, §4), as written there: PR 4e-3 × 0.25, IR 4e-3, INS 0.008 × 0.3.
OFFICIAL_TWO_STAGE_WEIGHTS = (4e-3 * 0.25, 4e-3, 0.008 * 0.3)
OFFICIAL_ONE_STAGE_WEIGHTS = (0.0, 5e-3, 0.0)  # the one-stage file keeps IR only (it does not run as released)

REDUCTIONS = ("mse", "frobenius_sum")
RELATION_FILTERS = ("gate", "random", "none")
IR_TARGETS = ("features", "matrix")
TEACHER_MODULES = ("trainable", "frozen")

# --------------------------------------------------------------------------------------------------
# Configuration (§6)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DRKDConfig:
    """What to build and how to reduce; field comments give the §6 row and the official value."""

    student_channels: int = 64  # §6.12: our FPN widths (official: 256 / 256)
    teacher_channels: int = 128
    glore_nodes: tuple[int, ...] = (32, 32, 16)  # §6.4, one per PR level: C_t/4 on the finest two, 16 on P5
    glore_normalize: bool = True  # §6.4: divide V by H·W (official: off)
    ir_levels: int = 2  # IR and INS on the two finest levels given (§1, §6.3)
    roi_strides: tuple[int, ...] = (8, 16)  # strides of those levels: P3, P4 for us (official P2, P3: 4, 8)
    roi_size: int = 3
    roi_aligned: bool = True  # §6.9 (official: torchvision defaults, aligned=False, sampling_ratio=-1)
    roi_sampling_ratio: int = 2
    clip_boxes: bool = True  # §6.9: boxes clipped to the image (official: not clipped)
    pool_from_image0: bool = False  # official bug (§3): every image's boxes are pooled from image 0's maps
    min_instances_ir: int = 2  # §6.9: images with fewer GT skip IR (official: 1, R = [1])
    empty_images: str = "skip"  # §6.9: n = 0 contributes 0; "raise" reproduces the official crash
    reduction: str = "mse"  # §6.1: per-level element MSE averaged over levels; "frobenius_sum" is the code's
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # λ_PR, λ_IR, λ_INS; §6.2 calibrates them for "mse"
    teacher_modules: str = "trainable"  # §6.5: teacher-side GloRe/relation modules trainable (code) or frozen
    relation_filter: str = "gate"  # §6.6: learnable n-independent gate; "random" = code, "none" = ablation
    filter_dim: int = 64  # d_f of the gate's query/key maps
    filter_bias_init: float = 2.0  # sigmoid(2) ≈ 0.88: the gate starts close to identity
    ir_target: str = "features"  # §6.7: relation-enhanced features (code) or "matrix" (R_s vs R_t, no adapter)
    logit_scale: bool = True  # §6.8: scale logits by 1/sqrt(D/2) (official: none)

    def __post_init__(self):
        for name, allowed in (("reduction", REDUCTIONS), ("relation_filter", RELATION_FILTERS),
                              ("ir_target", IR_TARGETS), ("teacher_modules", TEACHER_MODULES),
                              ("empty_images", ("skip", "raise"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if len(self.roi_strides) != self.ir_levels or self.ir_levels > len(self.glore_nodes):
            raise ValueError("need one RoI stride per IR level, and no more IR levels than PR levels")

    @classmethod
    def official(cls, **overrides) -> DRKDConfig:
        """The released two-stage code (Faster R-CNN, P2–P6 at 256 channels), quirks included (§2–§4)."""
        official = dict(
            student_channels=256, teacher_channels=256, glore_nodes=(64, 64, 256, 256, 256), glore_normalize=False,
            ir_levels=2, roi_strides=(4, 8), roi_aligned=False, roi_sampling_ratio=-1, clip_boxes=False,
            pool_from_image0=True, min_instances_ir=1, empty_images="raise", reduction="frobenius_sum",
            weights=OFFICIAL_TWO_STAGE_WEIGHTS, teacher_modules="trainable", relation_filter="random",
            ir_target="features", logit_scale=False,
        )
        return cls(**{**official, **overrides})


# --------------------------------------------------------------------------------------------------
# RoIAlign (§3; fixture README "RoIAlign"): torchvision's kernel, made separable
# --------------------------------------------------------------------------------------------------


def _axis_weights(start: Tensor, size: Tensor, pooled: int, grid: int, length: int) -> Tensor:
    """[pooled, length] matrix: sum over the ``grid`` samples of each bin of their linear-interpolation weights.

    Bilinear weights factor into a row part and a column part, and so does the kernel's out-of-range rule
    (a sample is zero when y or x is outside [-1, size]), so RoIAlign = My · V · Mxᵀ / count.
    Coordinates are computed in float32 in the kernel's order: (start + p·bin) + ((i + .5)·bin) / grid.
    """
    m = torch.zeros(pooled, length, dtype=torch.float32)
    if grid == 0:  # sub-pixel box with aligned=True and adaptive sampling: the kernel sums nothing
        return m
    bin_size = size / pooled
    p = torch.arange(pooled, dtype=torch.float32)[:, None]
    i = torch.arange(grid, dtype=torch.float32)[None, :]
    coord = (start + p * bin_size) + ((i + 0.5) * bin_size) / grid
    valid = ((coord >= -1.0) & (coord <= length)).float()
    coord = coord.clamp(min=0.0)
    low = coord.floor().long()  # the kernel's (int) cast; coord >= 0 here
    edge = low >= length - 1  # past the last pixel centre: all weight on the last pixel
    low = torch.where(edge, torch.full_like(low, length - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(coord), coord - low.float())
    m.scatter_add_(1, low, (1.0 - frac) * valid)
    m.scatter_add_(1, high, frac * valid)
    return m


def roi_align(features: Tensor, boxes: Tensor, batch_index: Tensor, output_size: int = 3, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` in pure PyTorch: ``features`` [B,C,H,W], ``boxes`` [K,4] (x1,y1,x2,y2 in input
    pixels), ``batch_index`` [K] → [K,C,P,P]. Differentiable w.r.t. ``features`` (boxes are constants)."""
    k = boxes.shape[0]
    _, c, h, w = features.shape
    if k == 0:
        return features.new_zeros(0, c, output_size, output_size)
    offset = 0.5 if aligned else 0.0
    # the kernel multiplies by the (double) scale before rounding to float
    scaled = (boxes.detach().double().cpu() * spatial_scale - offset).float()
    rows, cols, counts = [], [], []
    for x1, y1, x2, y2 in scaled:
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:  # legacy mode: rois at least one pixel wide
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(roi_h / output_size))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(roi_w / output_size))
        rows.append(_axis_weights(y1, roi_h, output_size, grid_h, h))
        cols.append(_axis_weights(x1, roi_w, output_size, grid_w, w))
        counts.append(max(grid_h * grid_w, 1))
    my = torch.stack(rows).to(features)
    mx = torch.stack(cols).to(features)
    count = torch.tensor(counts, dtype=features.dtype, device=features.device).view(k, 1, 1, 1)
    picked = features[batch_index.to(features.device)]
    return torch.einsum("kph,kchw,kqw->kcpq", my, picked, mx) / count


# --------------------------------------------------------------------------------------------------
# Pixel-wise relation: the GloRe unit (§2)
# --------------------------------------------------------------------------------------------------


class GCN(nn.Module):
    """One graph-convolution layer on V [B, C', N]: node mixing (+ residual), ReLU, state mixing (§2 step 4)."""

    def __init__(self, num_state: int, num_node: int):
        super().__init__()
        self.conv1 = nn.Conv1d(num_node, num_node, 1)  # over the node axis, with bias
        self.conv2 = nn.Conv1d(num_state, num_state, 1, bias=False)

    def forward(self, v: Tensor) -> Tensor:
        h = self.conv1(v.transpose(1, 2)).transpose(1, 2)
        return self.conv2(F.relu(h + v))  # the code's residual is "+": (I + A_g) V, A_g learned


class GloReUnit(nn.Module):
    """Global reasoning unit (official ``GloRe_Unit_2D(C, m)``): m graph nodes, 2m state channels (§2)."""

    def __init__(self, channels: int, nodes: int, normalize: bool = False):
        super().__init__()
        self.normalize = normalize
        self.conv_state = nn.Conv2d(channels, 2 * nodes, 1)
        self.conv_proj = nn.Conv2d(channels, nodes, 1)
        self.gcn = GCN(2 * nodes, nodes)
        self.conv_extend = nn.Conv2d(2 * nodes, channels, 1, bias=False)
        self.blocker = nn.BatchNorm2d(channels, eps=1e-4)  # default affine init, not zero-init (§2 step 6)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        state = self.conv_state(x).flatten(2)  # S [B, C', L]
        proj = self.conv_proj(x).flatten(2)  # P [B, N, L], no softmax
        v = torch.bmm(state, proj.transpose(1, 2))  # coordinate -> interaction space [B, C', N]
        if self.normalize:  # §6.4: makes V independent of the input size
            v = v * (1.0 / state.shape[2])
        y = torch.bmm(self.gcn(v), proj).reshape(b, -1, h, w)  # reverse projection with the same P
        return x + self.blocker(self.conv_extend(y))


# --------------------------------------------------------------------------------------------------
# Instance-wise relation (§3) and its relation filters (§3, §6.6)
# --------------------------------------------------------------------------------------------------


class RandomRelationFilter(nn.Module):
    """The released filter: row-softmax of a Linear(D → n) drawn afresh at every call, never trained (§3).

    The weights come from the global RNG in ``nn.Linear``'s default-init order (kaiming-uniform weight, then
    uniform bias), so seeding the global RNG before a call reproduces an official call; ``weight``/``bias`` inject
    a recorded draw instead. The mask stays differentiable w.r.t. ``x``, as in the code.
    """

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        n, d = x.shape
        if weight is None or bias is None:
            weight, bias = torch.empty(n, d), torch.empty(n)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            nn.init.uniform_(bias, -1.0 / math.sqrt(d), 1.0 / math.sqrt(d))
        return torch.softmax(F.linear(x, weight.to(x), bias.to(x)), dim=1)


class RelationGate(nn.Module):
    """Our learnable filter (§6.6): w_ij = sigmoid(q(x_i)·k(x_j)/sqrt(d_f) + b), defined for any n."""

    def __init__(self, dim: int, filter_dim: int = 64, bias_init: float = 2.0):
        super().__init__()
        self.q = nn.Linear(dim, filter_dim)
        self.k = nn.Linear(dim, filter_dim)
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))
        self.scale = filter_dim ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.q(x) @ self.k(x).t() * self.scale + self.bias)


class InstanceRelation(nn.Module):
    """Official ``ObjectRelation_1(D)``: z_i = x_i + W(Σ_j softmax_j(w_ij·θ(x_i)·φ(x_j)) g(x_j)) (§3)."""

    def __init__(self, dim: int, relation_filter: str = "gate", logit_scale: bool = True, filter_dim: int = 64,
                 filter_bias_init: float = 2.0):
        super().__init__()
        inner = dim // 2
        # the official maps are wrapped in one-element nn.Sequential's (keys theta.0.*, phi.0.*, g.0.*)
        self.theta = nn.Sequential(nn.Linear(dim, inner))
        self.phi = nn.Sequential(nn.Linear(dim, inner))
        self.g = nn.Sequential(nn.Linear(dim, inner))
        self.W = nn.Linear(inner, dim)
        self.scale = inner ** -0.5 if logit_scale else 1.0  # §6.8: unscaled 1152-d dot products are near one-hot
        self.filter: nn.Module | None = {
            "gate": lambda: RelationGate(dim, filter_dim, filter_bias_init),
            "random": RandomRelationFilter,
            "none": lambda: None,
        }[relation_filter]()

    def forward(self, rois: Tensor, filter_params: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``rois`` [n, C, s, s] → (relation-enhanced features [n, C, s, s], relation matrix R [n, n]).

        ``filter_params`` injects the (weight, bias) of a random filter's draw (fidelity tests only).
        """
        n = rois.shape[0]
        if n == 0:  # the code's x.view(0, -1) raises here (§3): callers decide whether n = 0 is an error
            raise RuntimeError("InstanceRelation needs at least one instance (the official code raises on n = 0)")
        x = rois.reshape(n, -1)
        logits = self.theta(x) @ self.phi(x).t() * self.scale
        if isinstance(self.filter, RandomRelationFilter):
            logits = self.filter(x, *(filter_params or (None, None))) * logits
        elif self.filter is not None:
            logits = self.filter(x) * logits
        relation = torch.softmax(logits, dim=1)
        z = x + self.W(relation @ self.g(x))
        return z.reshape(rois.shape), relation


# --------------------------------------------------------------------------------------------------
# The helper modules and the three loss terms (§2–§4)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DRKDOutput:
    """Weighted loss terms, their unweighted parts and the intermediate tensors (names follow the fixture).

    ``pr_terms`` is keyed ``"L{level}"``; ``ir_terms``/``ins_terms`` are keyed ``"L{level}_img{b}"`` under
    ``frobenius_sum`` (the code's per-image distances) and ``"L{level}"`` under ``mse``.
    """

    pr: Tensor
    ir: Tensor
    ins: Tensor
    pr_terms: dict[str, Tensor]
    ir_terms: dict[str, Tensor]
    ins_terms: dict[str, Tensor]
    tensors: dict[str, Tensor]
    diagnostics: dict[str, Tensor]  # §6.5: teacher-side GloRe residual size and cosine, per level (detached)

    @property
    def total(self) -> Tensor:
        return self.pr + self.ir + self.ins

    def losses(self) -> dict[str, Tensor]:
        return {"loss_drkd_pr": self.pr, "loss_drkd_ir": self.ir, "loss_drkd_ins": self.ins}


def _adapter(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)  # 1×1 conv with bias, on the student side only


class DRKDHelpers(nn.Module):
    """All DRKD training-only modules (official attribute names) and the loss computation.

    ``forward(student_feats, teacher_feats, gt_boxes)``: the FPN maps finest first (PR on all of them, IR/INS on
    the first ``ir_levels``) and one [n_b, 4] box tensor per image (x1,y1,x2,y2 in input pixels). Teacher
    features are detached here, so no gradient can reach the teacher network.
    """

    def __init__(self, config: DRKDConfig | None = None, *, official_quirks: bool = False):
        super().__init__()
        if config is None:
            config = DRKDConfig.official() if official_quirks else DRKDConfig()
        cfg = self.config = config
        cs, ct = cfg.student_channels, cfg.teacher_channels
        d_s, d_t = cs * cfg.roi_size ** 2, ct * cfg.roi_size ** 2
        relation = dict(relation_filter=cfg.relation_filter, logit_scale=cfg.logit_scale, filter_dim=cfg.filter_dim,
                        filter_bias_init=cfg.filter_bias_init)
        # registration order = the official checkpoint's key order
        self.student_non_local = nn.ModuleList(GloReUnit(cs, m, cfg.glore_normalize) for m in cfg.glore_nodes)
        self.teacher_non_local = nn.ModuleList(GloReUnit(ct, m, cfg.glore_normalize) for m in cfg.glore_nodes)
        self.non_local_adaptation = nn.ModuleList(_adapter(cs, ct) for _ in cfg.glore_nodes)
        self.student_relation = nn.ModuleList(InstanceRelation(d_s, **relation) for _ in range(cfg.ir_levels))
        self.teacher_relation = nn.ModuleList(InstanceRelation(d_t, **relation) for _ in range(cfg.ir_levels))
        if cfg.ir_target == "features":  # the matrix target compares R_s and R_t directly, without an adapter
            self.relation_adaptation = nn.ModuleList(_adapter(cs, ct) for _ in range(cfg.ir_levels))
        self.for_adaptation = nn.ModuleList(_adapter(cs, ct) for _ in range(cfg.ir_levels))
        if cfg.teacher_modules == "frozen":  # §6.5 ablation: teacher-side helpers stay at their init
            for module in (self.teacher_non_local, self.teacher_relation):
                module.requires_grad_(False)

    # -- pieces ------------------------------------------------------------------------------------

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.config.reduction == "frobenius_sum":
            return torch.dist(a, b, p=2)  # the code's norm: not squared, not averaged (§2)
        return F.mse_loss(a, b)

    def _pool(self, feats: Tensor, boxes: Tensor, image: int, level: int, image_size: tuple[int, int]) -> Tensor:
        cfg = self.config
        if cfg.clip_boxes:
            h, w = image_size
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
        index = torch.full((boxes.shape[0],), 0 if cfg.pool_from_image0 else image, dtype=torch.long)
        return roi_align(feats, boxes, index, cfg.roi_size, 1.0 / cfg.roi_strides[level], cfg.roi_sampling_ratio,
                         cfg.roi_aligned)

    # -- forward -----------------------------------------------------------------------------------

    def forward(self, student_feats: list[Tensor], teacher_feats: list[Tensor], gt_boxes: list[Tensor],
                image_size: tuple[int, int] | None = None,
                filter_params: dict[tuple[int, int, int], tuple[Tensor, Tensor]] | None = None) -> DRKDOutput:
        """Loss terms for one batch.

        ``image_size`` (h, w) bounds box clipping; by default the padded input size implied by the finest IR
        level. ``filter_params[(level, image, side)]`` (side 0 student, 1 teacher) injects recorded draws of the
        official random filter.
        """
        cfg = self.config
        if len(student_feats) != len(teacher_feats) or len(student_feats) > len(self.student_non_local):
            raise ValueError(f"need matching pyramids of at most {len(self.student_non_local)} levels")
        teacher_feats = [t.detach() for t in teacher_feats]  # the teacher is a constant (§1)
        tensors: dict[str, Tensor] = {}
        diagnostics: dict[str, Tensor] = {}

        # PR (§2): every level given, like the code's loop over len(t_feats)
        pr_terms = {}
        for level, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
            gs, gt = self.student_non_local[level](fs), self.teacher_non_local[level](ft)
            tensors[f"glore_s_L{level}"], tensors[f"glore_t_L{level}"] = gs, gt
            pr_terms[f"L{level}"] = self._distance(self.non_local_adaptation[level](gs), gt)
            with torch.no_grad():  # §6.5: is the teacher-side unit drifting away from F_t?
                diagnostics[f"teacher_residual_ratio_L{level}"] = (gt - ft).norm() / ft.norm().clamp(min=1e-12)
                diagnostics[f"teacher_cosine_L{level}"] = F.cosine_similarity(gt.flatten(), ft.flatten(), dim=0)

        # IR and INS (§3) on the finest ir_levels levels; relations are per image, never across images
        if image_size is None:
            stride = cfg.roi_strides[0]
            image_size = (student_feats[0].shape[2] * stride, student_feats[0].shape[3] * stride)
        ir_parts: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        ins_parts: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
        for level in range(min(cfg.ir_levels, len(student_feats))):
            ir_parts[level], ins_parts[level] = [], []
            for image, boxes in enumerate(gt_boxes):
                n = boxes.shape[0]
                if n == 0 and cfg.empty_images == "raise":
                    raise RuntimeError(f"image {image} has no GT box: the official code crashes here (§3)")
                if n == 0:
                    continue
                tag = f"L{level}_img{image}"
                xs = self._pool(student_feats[level], boxes, image, level, image_size)
                xt = self._pool(teacher_feats[level], boxes, image, level, image_size)
                tensors[f"roi_s_{tag}"], tensors[f"roi_t_{tag}"] = xs, xt
                ins_parts[level].append((image, self.for_adaptation[level](xs), xt))
                if n < cfg.min_instances_ir:
                    continue
                params = filter_params or {}
                zs, rs = self.student_relation[level](xs, params.get((level, image, 0)))
                zt, rt = self.teacher_relation[level](xt, params.get((level, image, 1)))
                tensors[f"rel_z_s_{tag}"], tensors[f"rel_z_t_{tag}"] = zs, zt
                tensors[f"rel_R_s_{tag}"], tensors[f"rel_R_t_{tag}"] = rs, rt
                if cfg.ir_target == "features":
                    ir_parts[level].append((image, self.relation_adaptation[level](zs), zt))
                else:
                    ir_parts[level].append((image, rs, rt))

        ir_terms, ins_terms = self._instance_terms(ir_parts), self._instance_terms(ins_parts)
        zero = student_feats[0].new_zeros(())
        w_pr, w_ir, w_ins = cfg.weights
        return DRKDOutput(
            pr=w_pr * self._combine(pr_terms, zero), ir=w_ir * self._combine(ir_terms, zero),
            ins=w_ins * self._combine(ins_terms, zero), pr_terms=pr_terms, ir_terms=ir_terms, ins_terms=ins_terms,
            tensors=tensors, diagnostics=diagnostics,
        )

    def _instance_terms(self, parts: dict[int, list[tuple[int, Tensor, Tensor]]]) -> dict[str, Tensor]:
        """Per-image distances (code) or, for MSE, one term per level over all its instances (size-invariant)."""
        terms = {}
        for level, pairs in parts.items():
            if not pairs:
                continue
            if self.config.reduction == "frobenius_sum":
                terms.update({f"L{level}_img{b}": self._distance(a, t) for b, a, t in pairs})
            else:
                a = torch.cat([p[1].flatten() for p in pairs])
                t = torch.cat([p[2].flatten() for p in pairs])
                terms[f"L{level}"] = self._distance(a, t)
        return terms

    def _combine(self, terms: dict[str, Tensor], zero: Tensor) -> Tensor:
        if not terms:
            return zero
        total = torch.stack(list(terms.values())).sum()
        return total if self.config.reduction == "frobenius_sum" else total / len(terms)
