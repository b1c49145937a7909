"""Profiling and the predict/bench commands: statistics, JSON fields, the compare table, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinyvim_deploy as tv
from tests.conftest import PHOTOS, need_shared, tvdeploy
from tinyvim_deploy.profiling import LatencyStats, benchmark

LATENCY_FIELDS = {"n", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
RESULT_FIELDS = {"artifact", "backend", "device", "batch", "threads", "warmup", "iterations", "load_s",
                 "first_inference_ms", "latency", "throughput_ips", "peak_rss_mb", "cuda_peak_mb", "stages", "mode"}


def test_latency_stats_are_the_usual_ones():
    samples = np.arange(1, 101) / 1e3  # 1..100 ms
    s = LatencyStats.from_seconds(samples)
    assert (s.n, s.min_ms, s.max_ms) == (100, 1.0, 100.0)
    assert s.mean_ms == pytest.approx(50.5) and s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))


def test_benchmark_counts_runs_and_splits_stages(seed7_onnx):
    p = tv.Predictor(seed7_onnx)
    r = benchmark(p, batch=2, warmup=1, iterations=4)
    assert (r.iterations, r.batch, r.mode, r.stages) == (4, 2, "inference", {})
    assert 0 < r.latency.min_ms <= r.latency.p50_ms <= r.latency.max_ms
    assert r.throughput_ips == pytest.approx(2 * 1e3 / r.latency.mean_ms, rel=1e-6)
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    e2e = benchmark(p, batch=1, warmup=0, duration=0.2, images=[rgb])
    assert e2e.mode == "end-to-end" and set(e2e.stages) == {"preprocess", "inference", "postprocess"}
    assert e2e.iterations >= 1 and e2e.latency.mean_ms == pytest.approx(
        sum(s.mean_ms for s in e2e.stages.values()), rel=1e-6)


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"batch": 0}, {"warmup": -1}, {"duration": -1.0}])
def test_benchmark_refuses_a_bad_plan(seed7_onnx, kwargs):
    with pytest.raises(tv.TinyViMDeployError):
        benchmark(tv.Predictor(seed7_onnx), **kwargs)


def test_predict_reports_bad_files_and_predicts_the_rest(seed7_onnx, tmp_path):
    photos = need_shared(PHOTOS)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "p.json"
    r = tvdeploy("predict", seed7_onnx, photos, tmp_path / "broken.jpg", "--topk", "3", "--json", out)
    assert r.returncode == 1, r.stderr
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    data = json.loads(out.read_text())
    n_photos = len(list(photos.iterdir()))
    assert len(data["results"]) == n_photos and [e["source"] for e in data["errors"]] == [str(tmp_path / "broken.jpg")]
    for result in data["results"]:
        assert len(result["indices"]) == 3 and result["labels"][0] in r.stdout and result["source"] in r.stdout


def test_predict_with_only_missing_files_exits_1(tmp_path):
    r = tvdeploy("predict", "tinyvim-s", tmp_path / "gone.png")
    assert r.returncode == 1 and "gone.png" in r.stderr and "Traceback" not in r.stderr


def test_predict_all_good_exits_0(seed7_onnx):
    r = tvdeploy("predict", seed7_onnx, need_shared(PHOTOS) / "chelsea.png", "--topk", "2")
    assert r.returncode == 0 and "chelsea.png" in r.stdout


def test_bench_json_has_every_field(seed7_onnx, tmp_path):
    r = tvdeploy("bench", seed7_onnx, "-n", "5", "--warmup", "1", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    result = data["result"]
    assert set(result) == RESULT_FIELDS and set(result["latency"]) == LATENCY_FIELDS
    assert result["iterations"] == 5 and result["peak_rss_mb"] > 50 and "onnxruntime" in data["environment"]
    for word in ("p50 ms", "p99 ms", "images/s", "peak RSS"):
        assert word in r.stdout


def test_bench_end_to_end_splits_stages(seed7_onnx, tmp_path):
    r = tvdeploy("bench", seed7_onnx, "--duration", "0.5", "--images", need_shared(PHOTOS) / "coffee.png",
                 "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    stages = json.loads((tmp_path / "b.json").read_text())["result"]["stages"]
    assert set(stages) == {"preprocess", "inference", "postprocess"} and "preprocess" in r.stdout


def test_compare_torch_and_onnx(tmp_path):
    weights = need_shared() / "tinyvim_s_seed7_train_layout.pth"
    r = tvdeploy("bench", "tinyvim-s", "--compare", "torch,onnx", "--weights", weights, "-n", "3", "--warmup", "1",
                 "--export-dir", tmp_path, "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    rows = {row["format"]: row for row in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert set(rows) == {"torch", "onnx"} and all(row["status"] == "ok" for row in rows.values())
    assert rows["onnx"]["max_abs_diff"] < 1e-4 and rows["torch"]["max_abs_diff"] < 1e-4
    assert rows["onnx"]["top1_agree"] and 20 < rows["onnx"]["size_mb"] < 30
    assert (tmp_path / "tinyvim-s.onnx").is_file()
    for word in ("torch", "onnx", "max abs diff", "size MB", "p99 ms"):
        assert word in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("bench", "tinyvim-s", "--compare", "torch,tflite"), "Unknown format"),
        (("bench", "tinyvim-s", "-n", "0"), "at least 1"),
        (("bench", "nonexistent.onnx"), "not found"),
        (("bench", "tinyvim-s.pt"), "neither a file nor a model"),
        (("predict", "tinyvim-s", "."), "No image files"),
        (("predict", "tinyvim-s", "x.png", "--topk", "0"), "topk"),
    ],
)
def test_bench_and_predict_user_errors(args, needle, tmp_path):
    r = tvdeploy(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_gpu_check_script_runs_its_cpu_smoke_path(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--models",
                        "tinyvim-s", "--batches", "1", "-n", "2", "--warmup", "0", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| tinyvim-s | 1 | eager fp32 |" in r.stdout
    assert json.loads(out.read_text())["timing"][0]["iterations"] == 2
