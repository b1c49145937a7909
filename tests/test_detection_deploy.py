"""Detectors from PyTorch to ONNX Runtime with NMS, the Predictor, drawing, COCO eval and the train/distill CLI.

drkd.md §7.5 CI items 4 (export) and the user paths of issue 8; the NMS subgraph itself is tests/test_nms_export.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

import tinyvim_deploy as tv
from tests.conftest import PHOTOS, need_shared
from tinyvim_deploy.cli import main as cli_main

SIZE = 128  # small inputs keep exports quick; the deploy default is 320


@pytest.fixture(scope="module")
def det_export(tmp_path_factory):
    """tinyvim-s-det, seeded weights saved as a DRKD *training checkpoint* (student + helpers), exported with NMS."""
    from tinyvim_deploy.export.onnx_export import export_onnx
    from tinyvim_deploy.training.detect import DetectionTrainConfig, save_training_checkpoint
    from tinyvim_deploy.training.drkd import DRKDHelpers

    root = tmp_path_factory.mktemp("det")
    torch.manual_seed(0)
    student = tv.create_model("tinyvim-s-det")
    helpers = DRKDHelpers()
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(helpers.parameters()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ckpt = root / "last.ckpt"
    save_training_checkpoint(ckpt, student, helpers, optimizer, scheduler, 0, [], {}, (1.0, 1.0, 1.0),
                             DetectionTrainConfig(method="drkd"), "tinyvim-s-det")
    plain = root / "plain.pth"
    torch.save(student.state_dict(), plain)
    result = export_onnx("tinyvim-s-det", weights=ckpt, output=root / "det.onnx", input_size=SIZE,
                         photos_dir=PHOTOS if PHOTOS.is_dir() else None)
    return root, ckpt, plain, result


def test_export_validates_raw_outputs_and_nms_and_has_the_contract(det_export):
    _, _, _, result = det_export
    report = result.report
    assert report.passed
    raw = [c for c in report.checks if "boxes / side" in c.name or ": scores" in c.name]
    assert raw and all(c.max_abs <= 1e-4 for c in raw)
    nms = [c for c in report.checks if "NMS vs reference" in c.name]
    assert nms and all(c.max_abs <= 1e-6 and c.top1_agree == 1.0 for c in nms)  # identical detections
    model = onnx.load(result.path)
    assert [o.name for o in model.graph.output] == ["num_dets", "boxes", "scores", "classes"]
    types = [o.type.tensor_type.elem_type for o in model.graph.output]
    assert types == [onnx.TensorProto.INT32, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.INT32]
    assert json.loads(result.metadata["nms"])["kind"] == "onnx"


def test_the_exported_student_has_no_drkd_part(det_export, tmp_path):
    """Weights from a DRKD training checkpoint: the graph equals one exported from the plain student weights."""
    from tinyvim_deploy.export.onnx_export import export_onnx

    _, _, plain, distilled = det_export
    baseline = export_onnx("tinyvim-s-det", weights=plain, output=tmp_path / "plain.onnx", input_size=SIZE)
    a, b = onnx.load(distilled.path), onnx.load(baseline.path)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert sum(int(np.prod(i.dims)) for i in a.graph.initializer) == sum(int(np.prod(i.dims)) for i in b.graph.initializer)
    names = " ".join([i.name for i in a.graph.initializer] + [n.name for n in a.graph.node]).lower()
    assert not any(word in names for word in ("non_local", "relation", "adaptation", "glore"))


def test_predictor_unletterboxes_onto_the_original_image(det_export):
    _, _, _, result = det_export
    predictor = tv.Predictor(result.path)
    rgb = np.random.default_rng(0).integers(0, 255, (90, 200, 3), dtype=np.uint8)  # wide: padded at the bottom
    det = predictor(rgb)
    assert isinstance(det, tv.DetectionResult) and len(det) > 0
    assert det.boxes.shape == (len(det), 4) and (det.boxes >= 0).all()
    assert (det.boxes[:, [0, 2]] <= 200).all() and (det.boxes[:, [1, 3]] <= 90).all()
    assert set(det.labels) <= set(tv.get_spec("tinyvim-s-det").class_names)
    assert list(det.scores) == sorted(det.scores, reverse=True)
    # the same raw network through PyTorch + the reference NMS: the best detection is the same box
    reference = tv.Predictor("tinyvim-s-det", weights=det_export[2], input_size=SIZE)(rgb)
    assert det.class_ids[0] == reference.class_ids[0]
    assert np.abs(det.boxes[0] - reference.boxes[0]).max() < 1e-3
    drawn = det.draw(rgb)
    assert drawn.shape == rgb.shape and (drawn != rgb).any()


def test_efficient_nms_variant_is_checked_and_ort_refuses_it_in_one_line(tmp_path):
    from tinyvim_deploy.export.nms import structural_check_efficient_nms
    from tinyvim_deploy.export.onnx_export import export_onnx

    torch.manual_seed(0)
    result = export_onnx("tinyvim-s-det", output=tmp_path / "trt.onnx", input_size=SIZE, nms="efficient-nms")
    assert result.report.passed and not any("NMS" in c.name for c in result.report.checks)  # raw part validated
    model = onnx.load(result.path)
    assert structural_check_efficient_nms(model) == []
    assert [n.op_type for n in model.graph.node][-1] == "EfficientNMS_TRT"
    with pytest.raises(tv.BackendUnavailableError, match="only TensorRT runs"):
        tv.Predictor(result.path)


def test_cli_predict_draws_and_eval_gives_the_same_ap_on_onnx_and_torch(det_export, tmp_path, capsys):
    root, _, plain, result = det_export
    photos = need_shared(PHOTOS)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", str(result.path), str(photos / "rocket.jpg"), str(photos / "chelsea.png"),
                  "--save-dir", str(tmp_path / "drawn"), "--conf", "0"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "rocket.jpg" in out and "detections" in out
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["chelsea_boxes.jpg", "rocket_boxes.jpg"]

    aps = []
    for artifact, extra in ((str(result.path), []), ("tinyvim-s-det", ["--weights", str(plain), "--input-size",
                                                                      str(SIZE)])):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["eval", artifact, "--data", "synthetic:shapesdet", "--images", "8",
                      "--json", str(tmp_path / "m.json"), *extra])
        assert exit_info.value.code in (0, None)
        aps.append(json.loads((tmp_path / "m.json").read_text()))
    assert aps[0]["area_ranges"]["small"][1] == pytest.approx((32 * SIZE / 640) ** 2)
    for key in ("ap", "ap50"):
        assert abs(aps[0][key] - aps[1][key]) < 1e-3


def test_cli_train_then_distill_then_resume_rules(tmp_path, capsys):
    teacher_dir, student_dir = tmp_path / "t", tmp_path / "s"
    common = ["--images", "8", "--val-images", "4", "--epochs", "1", "--batch", "4", "--input-size", "64"]
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--model", "tinyvim-s-det", "-o", str(teacher_dir), *common])
    assert e.value.code in (0, None) and (teacher_dir / "tinyvim-s-det.pth").is_file()
    with pytest.raises(SystemExit) as e:
        cli_main(["distill", "--teacher", str(teacher_dir / "tinyvim-s-det.pth"), "--method", "fitnet",
                  "-o", str(student_dir), *common])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "COCO metrics on 4 validation images" in out and "teacher tinyvim-s-det" in out
    weights = torch.load(student_dir / "tinyvim-s-det.pth", weights_only=True)
    assert weights["model_name"] == "tinyvim-s-det" and len(weights["kd_weights"]) == 1
    with pytest.raises(SystemExit) as e:  # the run folder holds a checkpoint: continuing must be explicit
        cli_main(["distill", "--teacher", str(teacher_dir / "tinyvim-s-det.pth"), "-o", str(student_dir), *common])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


def test_bench_compare_times_a_detector_on_torch_and_onnx(tmp_path):
    from tinyvim_deploy.profiling import compare_formats

    rows = compare_formats("tinyvim-s-det", ["torch", "onnx"], workdir=tmp_path, input_size=SIZE, warmup=1,
                           iterations=3)
    assert [r.status for r in rows] == ["ok", "ok"]
    for row in rows:  # ranked detection scores after NMS, against unfused eager PyTorch
        assert row.max_abs_diff < 1e-4 and row.result.latency.p50_ms > 0


def test_eval_reads_a_coco_folder(det_export, tmp_path, capsys):
    from tinyvim_deploy.training.shapesdet import make_detection_dataset, write_coco_folder

    _, _, plain, result = det_export
    write_coco_folder(tmp_path / "coco", make_detection_dataset(4, size=96, seed=3, split="test"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", str(result.path), "--data", str(tmp_path / "coco"), "--json", str(tmp_path / "m.json")])
    assert exit_info.value.code in (0, None)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["area_ranges"]["small"][1] == pytest.approx((32 * 96 / 640) ** 2)
    # the same folder through PyTorch + the reference NMS: the COCO reader and evaluator see the same boxes
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["eval", "tinyvim-s-det", "--weights", str(plain), "--input-size", str(SIZE), "--data",
                  str(tmp_path / "coco"), "--json", str(tmp_path / "t.json")])
    assert exit_info.value.code in (0, None)
    reference = json.loads((tmp_path / "t.json").read_text())
    for key in ("ap", "ap50"):
        assert abs(metrics[key] - reference[key]) < 1e-3
    assert "on 4 images of" in capsys.readouterr().out
