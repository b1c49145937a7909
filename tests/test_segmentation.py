"""Segmentors end to end: registry, the shared test pipeline, export parity, Predictor, predict, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import tinyvim_deploy as tv
from tests.conftest import PHOTOS, SHARED, need_shared, tvdeploy
from tinyvim_deploy.tasks.segmentation import (
    InputPlan,
    SegmentationMetrics,
    SegmentationResult,
    labels_from_logits,
    pair_images_and_labels,
    plan_input,
    prepare,
    read_label,
)

SEGMENTORS = ["tinyvim-s-cgrseg", "tinyvim-s-cgrseg-ssa", "tinyvim-b-fpn", "tinyvim-l-fpn"]


def test_segmentors_are_registered_with_their_pipeline():
    for name in SEGMENTORS:
        spec = tv.get_spec(name)
        assert spec.task == "segmentation" and spec.num_classes == 150 and spec.test_scale == (2048, 512)
        assert spec.class_names[:3] == ("wall", "building", "sky") and spec.class_names[7] == "bed"
        assert len(spec.palette) == 150 and spec.palette[0] == (120, 120, 120)
    assert tv.get_spec("tinyvim-s-cgrseg").resize_mode == "pad"  # CGRSeg pads; TinyViM FPN and SSA stretch
    assert tv.get_spec("tinyvim-b-fpn").resize_mode == "stretch" and tv.get_spec("tinyvim-b-fpn").output_stride == 4


@pytest.mark.parametrize("name", ["tinyvim-b-fpn", "tinyvim-l-fpn"])
def test_official_fpn_segmentors_match_their_manifests(name):
    manifest = json.loads((need_shared(SHARED / "specs" / "manifests") / f"{name.replace('-', '_')}.json").read_text())
    model = tv.create_model(name)
    state = model.state_dict()
    assert [k["key"] for k in manifest["keys"]] == list(state)
    assert all(list(state[k["key"]].shape) == k["shape"] for k in manifest["keys"])
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == model.spec.params


@pytest.mark.parametrize("hw, mode, box, resized, net", [
    ((512, 683), "pad", None, (512, 683), (512, 704)),  # short side already 512: pad right to 704
    ((512, 683), "stretch", None, (512, 704), (512, 704)),  # AlignResize: stretched, nothing padded
    ((300, 451), "pad", None, (512, 770), (512, 800)),  # upscaled to short side 512
    ((600, 4000), "pad", None, (307, 2048), (320, 2048)),  # long side capped at 2048
    ((300, 451), "pad", (512, 512), (341, 512), (512, 512)),  # a fixed-size artifact: fit inside, pad
])
def test_input_plan_follows_the_mmseg_test_pipeline(hw, mode, box, resized, net):
    spec = tv.get_spec("tinyvim-s-cgrseg")
    import dataclasses

    plan = plan_input(hw, dataclasses.replace(spec, resize_mode=mode), box)
    assert plan == InputPlan(hw, resized, net)


def test_prepare_normalises_like_mmcv_and_pads_with_zeros():
    spec = tv.get_spec("tinyvim-s-cgrseg")
    rgb = np.full((100, 150, 3), (123, 117, 104), np.uint8)
    x, plan = prepare(rgb, spec, (256, 256))
    assert x.shape == (3, 256, 256) and plan.resized_hw == (171, 256)
    expected = (np.array([123, 117, 104]) - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(x[:, 0, 0], expected, atol=1e-6)
    assert not x[:, 171:, :].any()  # the padding (after normalisation) is zero


def test_labels_come_back_at_the_original_size_through_crop_and_resize():
    plan = InputPlan((30, 40), (24, 32), (32, 32))  # valid region 24x32 of a 32x32 input
    logits = np.zeros((3, 8, 8), np.float32)
    logits[1, :6] = 5.0  # class 1 on the valid rows (stride 4: 6 of 8 rows are the 24 valid input rows)
    logits[2, 6:] = 5.0  # class 2 only in the padding
    labels, probs = labels_from_logits(logits, plan, probabilities=True)
    assert labels.shape == (30, 40) and labels.dtype == np.uint8
    assert (labels == 1).mean() > 0.95 and not (labels == 2).any()  # the padded rows were cropped away
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("hw, crop, stride", [((70, 100), (32, 48), (21, 30)), ((20, 30), (32, 48), (21, 32)),
                                              ((64, 96), (32, 48), (32, 48))])
def test_sliding_windows_cover_every_pixel_and_average_overlaps(hw, crop, stride):
    from tinyvim_deploy.tasks.segmentation import slide_logits

    x = np.random.default_rng(0).standard_normal((3, *hw)).astype(np.float32)
    seen = []

    def run(window):  # "logits" = the window itself at half resolution: exact under the bilinear resize back
        seen.append(window.shape)
        return torch.nn.functional.avg_pool2d(torch.from_numpy(window), 1).numpy()

    np.testing.assert_allclose(slide_logits(run, x, crop, stride), x, atol=1e-6)
    assert all(shape == (1, 3, *crop) for shape in seen)  # a fixed-size artifact always gets its size


def test_result_overlay_and_areas():
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 4:] = 2
    result = SegmentationResult(labels, ["a", "b", "c"], [(0, 0, 0), (0, 255, 0), (255, 0, 0)], source="x")
    image = np.full((4, 6, 3), 200, np.uint8)
    overlay = result.overlay(image, alpha=0.5)
    assert overlay.shape == (4, 6, 3) and overlay.dtype == np.uint8
    assert tuple(overlay[0, 5]) == (228, 100, 100) and tuple(overlay[0, 0]) == (100, 100, 100)
    assert [(i, n) for i, n, _ in result.areas()] == [(0, "a"), (2, "c")]
    assert abs(sum(a for *_, a in result.areas()) - 1.0) < 1e-9
    with pytest.raises(ValueError):
        result.overlay(np.zeros((5, 6, 3), np.uint8))


def test_miou_metric_sanity():
    gt = np.random.default_rng(0).integers(0, 5, (20, 30))
    m = SegmentationMetrics(5)
    m.update(gt, gt)
    assert m.miou == 1.0 and m.aacc == 1.0
    ignored = gt.copy()
    ignored[:5] = 255
    pred = gt.copy()
    pred[:5] = (pred[:5] + 1) % 5  # wrong only where the label is ignored
    m2 = SegmentationMetrics(5)
    m2.update(pred, ignored)
    assert m2.miou == 1.0 and m2.aacc == 1.0
    m3 = SegmentationMetrics(5)
    m3.update(np.zeros((2, 2), np.int64), np.array([[0, 1], [0, 1]]))
    assert m3.aacc == 0.5 and abs(m3.miou - 0.25) < 1e-12  # class 0: IoU 1/2, class 1: 0/2


def test_reduce_zero_label(tmp_path):
    Image.fromarray(np.array([[0, 1, 150, 255]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png", True), [[255, 0, 149, 255]])
    np.testing.assert_array_equal(read_label(tmp_path / "l.png", False), [[0, 1, 150, 255]])


@pytest.mark.parametrize("layout, needle", [
    ({}, "needs an images/ folder"),
    ({"images/a.jpg": "img", "annotations/b.png": "lbl"}, "has a label map of the same name"),
    ({"images/a.jpg": "img", "annotations/": None}, "holds no .png label maps"),
])
def test_bad_evaluation_folders_are_clear_errors(tmp_path, layout, needle):
    for rel, kind in layout.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "img":
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, format="JPEG")
        elif kind == "lbl":
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
        else:
            path.mkdir(exist_ok=True)
    with pytest.raises(tv.DatasetError, match=needle):
        pair_images_and_labels(tmp_path)
    with pytest.raises(tv.DatasetError, match="not found"):
        pair_images_and_labels(tmp_path / "missing")


# -- one seeded model through export, Predictor, predict and eval -------------------------------------

@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    """tinyvim-s-cgrseg with seeded random weights, its checkpoint and its ONNX export at 512 (validated)."""
    from tinyvim_deploy.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    weights = root / "s_cgrseg.pth"
    torch.save(tv.create_model("tinyvim-s-cgrseg").state_dict(), weights)
    result = export_onnx("tinyvim-s-cgrseg", weights=weights, output=root / "s_cgrseg.onnx", input_size=512,
                         photos_dir=PHOTOS if PHOTOS.is_dir() else None)
    assert result.report.passed and result.report.max_abs < 1e-4
    photo_check = [c for c in result.report.checks if "photos" in c.name]
    # (argmax near-ties of random weights may flip a few pixels between runtimes)
    assert not photo_check or (photo_check[0].miou >= 0.98 and photo_check[0].top1_agree >= 0.99)
    return weights, result.path


@pytest.mark.slow
def test_torch_and_onnx_give_the_same_label_maps_on_the_photos(seg_model):
    weights, onnx_path = seg_model
    need_shared(PHOTOS)
    torch_predictor = tv.Predictor("tinyvim-s-cgrseg", weights=weights, input_size=512)  # the same 512 box
    onnx_predictor = tv.Predictor(onnx_path)
    assert onnx_predictor.task.name == "segmentation" and not onnx_predictor.backend.dynamic_hw
    photos = [p for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".gif", ".tif")]
    for photo in photos:
        # Each predictor decodes the file itself (the 10x10 planar float64 TIFF changed between decodes while
        # OpenCV read it; tifffile reads it now, see images._first_tiff_page).
        a, b = torch_predictor(photo, probabilities=True), onnx_predictor(photo)
        original = tv.Predictor.decode(photo)[0]
        assert a.labels.shape == original.shape[:2] == b.labels.shape
        # Random weights leave near-ties between classes, where 1e-7 of float noise flips the argmax:
        # judge the pixels whose two best logits differ by more than 1e-4 (most of them).
        top2 = np.log(np.sort(a.probabilities, axis=0)[-2:])
        decided = (top2[1] - top2[0]) > 1e-4
        differ = int(np.sum(a.labels[decided] != b.labels[decided]))
        # >= 99.9% of the decided pixels (at least 2 allowed: the 10x10 TIFF has only 100)
        assert decided.mean() > 0.5 and differ <= max(2, 0.001 * decided.sum()), (photo.name, differ)
        assert np.mean(a.labels == b.labels) >= 0.9, photo.name
        assert a.overlay(original).shape == original.shape


@pytest.mark.slow
def test_sliding_window_prediction_at_full_resolution(seg_model, tmp_path):
    _, onnx_path = seg_model
    need_shared(PHOTOS)
    predictor = tv.Predictor(onnx_path)
    whole, slid = predictor(PHOTOS / "rocket.jpg"), predictor(PHOTOS / "rocket.jpg", slide=True)
    assert slid.labels.shape == whole.labels.shape == (427, 640)
    r = tvdeploy("predict", onnx_path, PHOTOS / "rocket.jpg", "--slide", "--stride", "256")
    assert r.returncode == 0 and "rocket.jpg (640x427)" in r.stdout, r.stderr


@pytest.mark.slow
def test_predict_saves_overlays_and_eval_scores_its_own_labels(seg_model, tmp_path):
    weights, onnx_path = seg_model
    need_shared(PHOTOS)
    photos = [PHOTOS / "astronaut.png", PHOTOS / "chelsea.png"]
    r = tvdeploy("predict", onnx_path, *photos, "--save-dir", tmp_path / "out", "--topk", "3")
    assert r.returncode == 0, r.stderr
    assert "astronaut.png (512x512)" in r.stdout and "area" in r.stdout
    for photo in photos:
        overlay = Image.open(tmp_path / "out" / f"{photo.stem}_overlay.png")
        labels = np.asarray(Image.open(tmp_path / "out" / f"{photo.stem}_labels.png"))
        assert overlay.size == Image.open(photo).size and overlay.mode == "RGB" and labels.shape == overlay.size[::-1]
        # an ADE20K-style evaluation folder whose ground truth is the ONNX model's own prediction
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "annotations").mkdir(parents=True, exist_ok=True)
        Image.open(photo).convert("RGB").save(tmp_path / "data" / "images" / f"{photo.stem}.png")
        Image.fromarray((labels + 1).astype(np.uint8)).save(tmp_path / "data" / "annotations" / f"{photo.stem}.png")
    r = tvdeploy("eval", onnx_path, "--data", tmp_path / "data", "--json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["mIoU"] == 1.0 and metrics["aAcc"] == 1.0 and metrics["images"] == 2
    r = tvdeploy("eval", "tinyvim-s-cgrseg", "--weights", weights, "--input-size", "512", "--data", tmp_path / "data",
                 "--json", tmp_path / "t.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t.json").read_text())["mIoU"] > 0.95  # eager PyTorch in the same 512 box
    r = tvdeploy("eval", onnx_path, "--data", tmp_path / "nowhere")
    assert r.returncode == 2 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_export_at_a_size_that_is_not_a_multiple_of_64(tmp_path):
    """480x640: the pyramid pooling is non-exact (15x20 -> 8x10) and uses the constant matrices."""
    from tinyvim_deploy.export.onnx_export import export_onnx

    torch.manual_seed(1)
    result = export_onnx("tinyvim-s-cgrseg-ssa", output=tmp_path / "ssa.onnx", input_size="480x640", photos_dir=None)
    assert result.report.passed and result.report.max_abs < 1e-4
    assert result.report.checks[0].miou >= 0.98
    r = tvdeploy("export", "--model", "tinyvim-s-cgrseg", "--input-size", "500", "-o", tmp_path / "x.onnx")
    assert r.returncode == 2 and "multiples of 32" in r.stderr and not (tmp_path / "x.onnx").exists()


# -- the official CGRSeg segmentors (EfficientFormerV2 backbones) ----------------------------------------

@pytest.mark.parametrize("name", ["cgrseg-t", "cgrseg-b", "cgrseg-l"])
def test_cgrseg_segmentors_match_their_manifests(name):
    manifest = json.loads((need_shared(SHARED / "specs" / "manifests") / f"{name.replace('-', '_')}.json").read_text())
    model = tv.create_model(name)
    state = model.state_dict()
    assert [k["key"] for k in manifest["keys"]] == list(state)
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == model.spec.params


def test_official_mmseg_checkpoints_load_strictly_and_ssa_training_weights_are_dropped(tmp_path):
    """An mmseg-layout file ({'meta', 'state_dict', 'optimizer'}) with the EfficientFormerV2 fixture backbone."""
    fixture = need_shared(SHARED / "fixtures" / "efficientformerv2")
    backbone = torch.load(fixture / "effv2_s1_seed7_fp16.pth", weights_only=True)
    model = tv.create_model("cgrseg-t")
    state = {k: v for k, v in model.state_dict().items() if k.startswith("decode_head.")}
    state.update({f"backbone.{k}": v.float() if v.is_floating_point() else v for k, v in backbone.items()})
    spec = tv.get_spec("cgrseg-t")
    meta = {"CLASSES": list(spec.class_names), "PALETTE": [list(c) for c in spec.palette]}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {}}, tmp_path / "cgrseg_t.pth")
    loaded = tv.create_model("cgrseg-t", weights=tmp_path / "cgrseg_t.pth")
    x = torch.from_numpy(np.load(fixture / "in512.npy")).float()
    with torch.no_grad():
        feats = loaded.backbone(x)
    np.testing.assert_allclose(feats[3].numpy(), np.load(fixture / "out512_feat3.npy"), atol=1e-4, rtol=1e-4)

    ssa = tv.create_model("cgrseg-b-ssa")
    official = dict(ssa.state_dict())
    channels = 256
    for key, shape in (("gt_center_content_proj.0.weight", (channels // 2, 2 * channels)),
                       ("gt_center_proj.weight", (channels, channels)), ("ssa_loss.criterion.empty_weight", (151,))):
        official[f"decode_head.{key}"] = torch.ones(shape)
    torch.save({"state_dict": official}, tmp_path / "ssa.pth")
    loaded = tv.create_model("cgrseg-b-ssa", weights=tmp_path / "ssa.pth")
    assert any("dropped 3 training-only entries" in note for note in loaded.checkpoint.notes)
    official["decode_head.unknown.weight"] = torch.ones(1)
    torch.save({"state_dict": official}, tmp_path / "bad.pth")
    with pytest.raises(tv.CheckpointError, match="unexpected keys 1 \\(decode_head.unknown.weight\\)"):
        tv.create_model("cgrseg-b-ssa", weights=tmp_path / "bad.pth")


@pytest.mark.slow
def test_cli_export_and_predict_cgrseg_t(tmp_path):
    r = tvdeploy("export", "--model", "cgrseg-t", "--target", "onnx", "-o", tmp_path / "cgrseg-t.onnx")
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and "mIoU (argmax)" in r.stdout and "custom ops: none," in r.stdout
    need_shared(PHOTOS)
    r = tvdeploy("predict", tmp_path / "cgrseg-t.onnx", PHOTOS, "--save-dir", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("area") == 9 and len(list((tmp_path / "out").glob("*_overlay.png"))) == 9


def test_include_postprocess_outputs_a_label_map(tmp_path):
    from tinyvim_deploy.export.onnx_export import export_onnx
    from tinyvim_deploy.export.validate import ort_session

    torch.manual_seed(0)
    result = export_onnx("cgrseg-t", output=tmp_path / "pp.onnx", input_size=256, photos_dir=None,
                         include_postprocess=True)
    assert result.report.passed and result.report.checks[0].labels and result.metadata["postprocess"] == "resize+argmax"
    session = ort_session(str(result.path))
    (out,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 256, 256), np.float32)})
    assert out.dtype == np.int32 and out.shape == (1, 256, 256)
    labels = tv.Predictor(result.path)(np.zeros((100, 300, 3), np.uint8)).labels
    assert labels.shape == (100, 300) and labels.dtype == np.uint8
    with pytest.raises(tv.ExportError, match="segmentors"):
        export_onnx("tinyvim-s", output=tmp_path / "c.onnx", include_postprocess=True)
