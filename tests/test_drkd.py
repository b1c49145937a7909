"""DRKD helper modules and losses (training/drkd.py) against the official fixture (shared/fixtures/drkd), plus the
properties drkd.md asks of our defaults: teacher features get no gradient, identical sides give a zero loss."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch

from tests.conftest import SHARED, need_shared
from tinyvim_deploy.training.drkd import DRKDConfig, DRKDHelpers, RandomRelationFilter, roi_align

DRKD = SHARED / "fixtures" / "drkd"
LEVELS = ("P2", "P3", "P4")
TAGS = [(level, image) for level in (0, 1) for image in (0, 1)]  # the official accumulation order
MODULES = [f"{name}.{i}" for name in ("student_non_local", "teacher_non_local", "non_local_adaptation") for i in range(5)]
MODULES += [f"{name}.{i}" for name in ("student_relation", "teacher_relation", "relation_adaptation", "for_adaptation")
            for i in range(2)]


def assert_tensor(actual, ref, name: str = "") -> None:
    """Fixture README tolerance for tensors: atol = 1e-5·max|ref|, rtol = 1e-5."""
    ref = np.asarray(ref)
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max(initial=0.0)), err_msg=name)


def assert_loss(actual, ref, name: str = "") -> None:
    np.testing.assert_allclose(float(actual.detach()), float(ref), rtol=1e-5, err_msg=name)


@cache
def fixture() -> tuple[dict, dict, dict]:
    need_shared(DRKD)
    state = torch.load(DRKD / "drkd_helpers_seed7_structured.pth", weights_only=True)
    return state, dict(np.load(DRKD / "inputs.npz")), dict(np.load(DRKD / "outputs.npz"))


def official_helpers(**overrides) -> DRKDHelpers:
    helpers = DRKDHelpers(DRKDConfig.official(**overrides))
    helpers.load_state_dict(fixture()[0], strict=True)
    return helpers


def features(side: str) -> list[torch.Tensor]:
    return [torch.from_numpy(fixture()[1][f"{side}_{p}"]).float() for p in LEVELS]  # fp16 on disk, fed as fp32


def boxes(case: str = "A") -> list[torch.Tensor]:
    return [torch.from_numpy(fixture()[1][f"gt_bboxes_{case}_img{b}"]) for b in (0, 1)]


def recorded_filters() -> dict:
    """The recorded draws of the official per-call random filter, keyed (level, image, side)."""
    out = fixture()[2]
    return {(level, image, side): (torch.from_numpy(out[f"filter_fc_weight_{s}_L{level}_img{image}"]),
                                   torch.from_numpy(out[f"filter_fc_bias_{s}_L{level}_img{image}"]))
            for level, image in TAGS for side, s in ((0, "s"), (1, "t"))}


@pytest.fixture(scope="module")
def train_step():
    """The fixture's train-mode step: forward, one autograd.grad per term, then backward of the total."""
    helpers = official_helpers().train()
    student = [f.requires_grad_() for f in features("student")]
    out = helpers(student, features("teacher"), boxes("A"), filter_params=recorded_filters())
    per_term = [torch.autograd.grad(term, student, retain_graph=True, allow_unused=True, materialize_grads=True)
                for term in (out.pr, out.ir, out.ins)]
    out.total.backward()
    return helpers, student, out, per_term


def test_official_state_dict_loads_strictly_in_official_order():
    state = fixture()[0]
    helpers = DRKDHelpers(official_quirks=True)
    assert list(helpers.state_dict()) == list(state)  # same keys, same registration order
    helpers.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in helpers.parameters()) == 47_436_544  # README: 47.4 M parameters


def test_loss_terms_and_distances(train_step):
    _, _, out, _ = train_step
    ref = fixture()[2]
    assert_loss(out.pr, ref["loss_kd_glore_loss"], "PR")
    assert_loss(out.ir, ref["loss_kd_relation_loss"], "IR")
    assert_loss(out.ins, ref["loss_kd_fore_loss"], "INS")
    assert_loss(out.total, ref["loss_total"], "total")
    assert_tensor(torch.stack([out.pr_terms[f"L{i}"] for i in range(3)]), ref["pr_dist"], "pr_dist")
    for key, terms in (("ir_dist", out.ir_terms), ("ins_dist", out.ins_terms)):
        assert_tensor(torch.stack([terms[f"L{lv}_img{b}"] for lv, b in TAGS]).view(2, 2), ref[key], key)


def test_roi_and_relation_tensors(train_step):
    _, _, out, _ = train_step
    ref = fixture()[2]
    for level, image in TAGS:
        for side in "st":
            tag = f"{side}_L{level}_img{image}"
            for name in (f"roi_{tag}", f"rel_z_{tag}", f"rel_R_{tag}"):
                assert_tensor(out.tensors[name], ref[name], name)
            weight, bias = recorded_filters()[(level, image, "st".index(side))]
            mask = RandomRelationFilter()(out.tensors[f"roi_{tag}"].flatten(1), weight, bias)
            assert_tensor(mask, ref[f"filter_mask_{tag}"], f"filter_mask_{tag}")


def test_glore_outputs_in_train_mode(train_step):
    _, _, out, _ = train_step
    ref, t = fixture()[2], out.tensors
    assert_tensor(t["glore_s_L1"], ref["glore_s_P3"], "glore_s_P3")
    assert_tensor(t["glore_s_L2"], ref["glore_s_P4"], "glore_s_P4")
    assert_tensor(t["glore_t_L2"], ref["glore_t_P4"], "glore_t_P4")
    for side, level, name in (("s", 0, "P2"), ("t", 0, "P2"), ("t", 1, "P3")):
        g = t[f"glore_{side}_L{level}"]
        assert_tensor(g.mean(dim=(2, 3)), ref[f"glore_{side}_{name}_chanmean"], f"glore_{side}_{name}_chanmean")
        assert_tensor(g.square().mean(dim=(2, 3)), ref[f"glore_{side}_{name}_chanmeansq"], f"{side}_{name}_chanmeansq")


def test_batchnorm_running_stats_after_the_step(train_step):
    helpers, _, _, _ = train_step
    ref = fixture()[2]
    for side in ("student", "teacher"):
        for i in range(3):
            bn = getattr(helpers, f"{side}_non_local")[i].blocker
            assert_tensor(bn.running_mean, ref[f"bn_after_{side}_non_local_{i}_running_mean"])
            assert_tensor(bn.running_var, ref[f"bn_after_{side}_non_local_{i}_running_var"])


def test_gradients(train_step):
    helpers, student, _, per_term = train_step
    ref = fixture()[2]
    assert_tensor(torch.stack([f.grad.norm() for f in student]), ref["grad_norm_total"], "grad_norm_total")
    assert_tensor(student[2].grad, ref["grad_student_P4"], "grad_student_P4")
    norms = torch.stack([torch.stack([g.norm() for g in grads]) for grads in per_term])
    assert_tensor(norms, ref["grad_norm_per_term"], "grad_norm_per_term")
    modules = dict(helpers.named_modules())
    # The fixture's feature-gradient norms are float32 .norm() values (they match to 1e-7 that way, 1e-5 in float64);
    # its parameter norms are exact ones: float32 .norm() is off by ~1e-4 on the 2.6 M-element relation weights.
    param_norms = torch.stack([
        torch.stack([p.grad.double().norm() if p.grad is not None else torch.zeros((), dtype=torch.float64)
                     for p in modules[m].parameters()]).norm() for m in MODULES])
    assert_tensor(param_norms, ref["param_grad_norm"], "param_grad_norm")
    assert (param_norms[5:8] > 0).all()  # the official teacher-side units are trainable (§6.5 default)


def test_glore_units_in_eval_mode():
    helpers = official_helpers().eval()  # the saved (perturbed) running statistics
    ref = fixture()[2]
    student_p4, teacher_p4 = features("student")[2], features("teacher")[2]
    with torch.no_grad():
        assert_tensor(helpers.student_non_local[1](student_p4), ref["eval_student_non_local_1_on_sP4"])
        assert_tensor(helpers.student_non_local[2](student_p4), ref["eval_student_non_local_2_on_sP4"])
        assert_tensor(helpers.teacher_non_local[2](teacher_p4), ref["eval_teacher_non_local_2_on_tP4"])


@cache
def variant_run():
    helpers = official_helpers(pool_from_image0=False).train()
    with torch.no_grad():
        return helpers(features("student"), features("teacher"), boxes("A"), filter_params=recorded_filters())


def test_per_image_pooling_variant_ins():
    """Our correction of the image-0 pooling bug, everything else official (README: variant_perimage_*)."""
    out, ref = variant_run(), fixture()[2]
    dist = torch.stack([out.ins_terms[f"L{lv}_img{b}"] for lv, b in TAGS]).view(2, 2)
    assert_tensor(dist, ref["variant_perimage_ins_dist"], "variant ins_dist")
    assert_loss(out.ins, ref["variant_perimage_kd_fore_loss"], "variant INS")
    ir = torch.stack([out.ir_terms[f"L{lv}_img0"] for lv in (0, 1)])  # image 0 pools from itself either way
    assert_tensor(ir, ref["variant_perimage_ir_dist"][:, 0], "variant ir_dist, image 0")


@pytest.mark.xfail(strict=True, reason="the fixture's variant IR distances of image 1 (54.7996, 69.4074) are not "
                   "reproduced by the README's recipe (same seeds' filter on the own-image RoIs gives 54.9933, "
                   "69.7207; the recorded masks 54.8592, 69.3250), although its INS distances are, to 3e-8")
def test_per_image_pooling_variant_ir_image1():
    out, ref = variant_run(), fixture()[2]
    dist = torch.stack([out.ir_terms[f"L{lv}_img1"] for lv in (0, 1)])
    assert_tensor(dist, ref["variant_perimage_ir_dist"][:, 1], "variant ir_dist, image 1")


def test_random_filter_draws_like_a_fresh_official_linear():
    """Seeding the global RNG as the fixture's hook did reproduces the official filter's draw (README §5)."""
    out = fixture()[2]
    for level, image, side in ((0, 1, 0), (1, 0, 1)):
        tag = f"{'st'[side]}_L{level}_img{image}"
        assert int(out[f"filter_seed_{tag}"]) == 1000 + 100 * level + 10 * image + side
        n = out[f"filter_fc_bias_{tag}"].shape[0]
        torch.manual_seed(int(out[f"filter_seed_{tag}"]))
        weight = torch.empty(n, 2304)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bias = torch.empty(n).uniform_(-1 / 48, 1 / 48)
        np.testing.assert_array_equal(weight.numpy(), out[f"filter_fc_weight_{tag}"])
        np.testing.assert_array_equal(bias.numpy(), out[f"filter_fc_bias_{tag}"])
        x = torch.randn(n, 2304)
        torch.manual_seed(int(out[f"filter_seed_{tag}"]))
        torch.testing.assert_close(RandomRelationFilter()(x), RandomRelationFilter()(x, weight, bias))


def test_image_without_gt():
    """Case B: the official code raises (README, case B); our default skips the image."""
    assert int(fixture()[2]["caseB_raised"]) == 1
    with pytest.raises(RuntimeError, match="no GT box"):
        official_helpers()(features("student"), features("teacher"), boxes("B"))
    small = DRKDConfig(student_channels=8, teacher_channels=16, glore_nodes=(4, 4), roi_strides=(8, 16))
    helpers = DRKDHelpers(small)
    s = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8)]
    t = [torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8)]
    one = torch.tensor([[10.0, 12.0, 60.0, 90.0]])
    out = helpers(s, t, [torch.zeros(0, 4), one])  # n = 0 and n = 1: no IR term at all, INS from image 1 only
    assert out.ir.item() == 0.0 and out.ir_terms == {}
    assert set(out.ins_terms) == {"L0", "L1"} and out.ins.item() > 0
    assert torch.isfinite(out.total)


def _small_pair(config: DRKDConfig) -> tuple[DRKDHelpers, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    helpers = DRKDHelpers(config)
    student = [torch.randn(2, config.student_channels, 32 // 2 ** i, 32 // 2 ** i) for i in range(3)]
    teacher = [torch.randn(2, config.teacher_channels, 32 // 2 ** i, 32 // 2 ** i) for i in range(3)]
    gt = [torch.tensor([[4.0, 8.0, 100.0, 60.0], [30.0, 30.0, 50.0, 250.0], [200.0, 2.0, 255.0, 40.0]]),
          torch.tensor([[0.0, 0.0, 128.0, 128.0], [60.0, 70.0, 90.0, 75.0]])]
    return helpers, student, teacher, gt


SMALL = DRKDConfig(student_channels=8, teacher_channels=8, glore_nodes=(4, 4, 2))


@pytest.mark.parametrize("config", [SMALL, DRKDConfig(student_channels=8, teacher_channels=16, glore_nodes=(4, 4, 2),
                                                       ir_target="matrix", teacher_modules="frozen"),
                                    DRKDConfig.official(student_channels=8, teacher_channels=8, glore_nodes=(4, 4, 2))],
                         ids=["ours", "matrix-frozen", "official"])
def test_no_gradient_reaches_the_teacher(config):
    helpers, student, teacher, gt = _small_pair(config)
    student = [f.requires_grad_() for f in student]
    teacher = [f.requires_grad_() for f in teacher]  # even if the caller forgot torch.no_grad()
    out = helpers(student, teacher, gt)
    out.total.backward()
    assert all(f.grad is None for f in teacher)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)
    teacher_side = [*helpers.teacher_non_local.parameters(), *helpers.teacher_relation.parameters()]
    if config.teacher_modules == "frozen":  # §6.5 ablation: teacher-side helpers stay at their init
        assert all(not p.requires_grad and p.grad is None for p in teacher_side)
    else:  # the code's default: they are trained by the distillation loss
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher_side)


@pytest.mark.parametrize("ir_target", ["features", "matrix"])
def test_identical_sides_give_zero_loss(ir_target):
    """§7.5: same inputs, same modules on both sides and identity adapters -> every term exactly 0, else > 0."""
    helpers, student, _, gt = _small_pair(DRKDConfig(student_channels=8, teacher_channels=8, glore_nodes=(4, 4, 2),
                                                     ir_target=ir_target, weights=(1.0, 2.0, 3.0)))
    helpers.teacher_non_local.load_state_dict(helpers.student_non_local.state_dict())
    helpers.teacher_relation.load_state_dict(helpers.student_relation.state_dict())
    with torch.no_grad():
        for conv in helpers.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.weight.shape[2:] == (1, 1) and conv.bias is not None \
                    and conv.in_channels == conv.out_channels == 8 and conv not in set(helpers.student_non_local.modules()) \
                    and conv not in set(helpers.teacher_non_local.modules()):
                conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
                conv.bias.zero_()
        out = helpers(student, [f.clone() for f in student], gt)
    assert out.pr.item() == out.ir.item() == out.ins.item() == 0.0
    assert len(out.pr_terms) == 3 and len(out.ir_terms) == len(out.ins_terms) == 2
    with torch.no_grad():
        different = helpers(student, [f + 0.1 * torch.randn_like(f) for f in student], gt)
    assert different.pr.item() > 0 and different.ir.item() > 0 and different.ins.item() > 0


def _roi_align_reference(feat, box, index, pooled, scale, ratio, aligned):
    """A scalar, loop-by-loop transcription of the torchvision kernel (README 'RoIAlign'), float64."""
    _, c, h, w = feat.shape
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - off for v in box)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / pooled, rw / pooled
    gh = ratio if ratio > 0 else math.ceil(rh / pooled)
    gw = ratio if ratio > 0 else math.ceil(rw / pooled)
    out = torch.zeros(c, pooled, pooled, dtype=torch.float64)
    for ph in range(pooled):
        for pw in range(pooled):
            for iy in range(gh):
                y = y1 + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = x1 + pw * bw + (ix + 0.5) * bw / gw
                    if y < -1.0 or y > h or x < -1.0 or x > w:
                        continue
                    yy, xx = max(y, 0.0), max(x, 0.0)
                    yl, xl = int(yy), int(xx)
                    yh, xh = min(yl + 1, h - 1), min(xl + 1, w - 1)
                    if yl >= h - 1:
                        yl = yh = h - 1
                        yy = float(yl)
                    if xl >= w - 1:
                        xl = xh = w - 1
                        xx = float(xl)
                    ly, lx = yy - yl, xx - xl
                    v = feat[index].double()
                    out[:, ph, pw] += ((1 - ly) * (1 - lx) * v[:, yl, xl] + (1 - ly) * lx * v[:, yl, xh]
                                       + ly * (1 - lx) * v[:, yh, xl] + ly * lx * v[:, yh, xh])
            out[:, ph, pw] /= max(gh * gw, 1)
    return out


@pytest.mark.parametrize("aligned, ratio", [(False, -1), (True, 2), (True, -1), (False, 3)])
def test_roi_align_matches_the_kernel_transcription(aligned, ratio):
    torch.manual_seed(1)
    feat = torch.randn(2, 3, 9, 11)
    boxes = torch.tensor([[3.0, 5.0, 30.0, 20.0], [-12.0, -6.0, 10.0, 50.0], [40.0, 30.0, 60.0, 45.0],
                          [7.3, 8.1, 7.9, 8.4], [0.0, 0.0, 44.0, 36.0], [20.5, 1.25, 43.0, 35.9]])
    index = torch.tensor([0, 1, 1, 0, 1, 0])
    out = roi_align(feat, boxes, index, 3, 0.25, ratio, aligned)
    ref = torch.stack([_roi_align_reference(feat, b, i, 3, 0.25, ratio, aligned) for b, i in zip(boxes, index)])
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-6)
