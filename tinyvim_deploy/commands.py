"""CLI commands that need the export/runtime machinery (registered on ``tinyvim_deploy.cli.app``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import typer

from tinyvim_deploy.cli import app, console, err_console
from tinyvim_deploy.errors import ArtifactError, ExportError, ImageError, ValidationError

TARGETS = ("onnx", "trt", "coreml")


def default_photos_dir() -> Path | None:
    """../shared/data/photos (or $TVD_SHARED/data/photos) when present: real images for validation."""
    root = os.environ.get("TVD_SHARED")
    candidates = [Path(root)] if root else [Path.cwd().parent / "shared", Path(__file__).resolve().parents[2] / "shared"]
    for base in candidates:
        if (base / "data" / "photos").is_dir():
            return base / "data" / "photos"
    return None


@app.command("export")
def export_cmd(
    model: str = typer.Option("tinyvim-s", "--model", "-m", help="Model name (see `tvdeploy models`)."),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Official checkpoint (any layout)."),
    target: str = typer.Option("onnx", "--target", "-t", help="onnx, trt (TensorRT engine) or coreml."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file (default from model and size)."),
    input_size: str | None = typer.Option(None, "--input-size", help="N or HxW, multiples of 32."),
    batch: int = typer.Option(1, "--batch", help="Static batch size."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Symbolic batch dimension."),
    opset: int = typer.Option(20, "--opset", help="ai.onnx opset (18-23)."),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxsim/onnxslim."),
    inline_custom_ops: bool = typer.Option(False, "--inline-custom-ops", help="Flat graph, no tinyvim domain."),
    scan_impl: str = typer.Option("scan", "--scan-impl", help="SelectiveScan body: scan, unrolled or chunked."),
    atol: float = typer.Option(1e-4, "--atol", help="Validation tolerance (max abs diff)."),
    photos: Path | None = typer.Option(None, "--photos", help="Folder of images for validation."),
    include_postprocess: bool = typer.Option(False, "--include-postprocess",
                                             help="Segmentors: resize + argmax in the graph (int32 label map out)."),
    int8: bool = typer.Option(False, "--int8", help="Also write an INT8 QDQ model (needs --calib-data)."),
    calib_data: Path | None = typer.Option(None, "--calib-data", help="Image folder (class subfolders ok) or list file."),
    calib_samples: int = typer.Option(256, "--calib-samples", help="Images used for calibration."),
    calib_method: str = typer.Option("entropy", "--calib-method", help="entropy, minmax or percentile."),
    int8_profile: str = typer.Option("ort-cpu", "--int8-profile", help="ort-cpu or tensorrt (Q/DQ placement)."),
    min_agreement: float = typer.Option(0.99, "--min-agreement", help="Top-1 agreement with float to keep."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Accuracy drop allowed (points), when labels exist."),
    holdout: int = typer.Option(256, "--holdout", help="Held-out images for the final INT8 check."),
    coreml_precision: str = typer.Option("fp16", "--coreml-precision", help="Core ML compute precision: fp16 or fp32."),
    int8_weights: bool = typer.Option(False, "--int8-weights", help="Core ML: INT8 per-channel weights (≈2× smaller)."),
    w8a8: bool = typer.Option(False, "--w8a8", help="Core ML (macOS): INT8 weights and activations (--calib-data)."),
    coreml_fp16_scan: bool = typer.Option(False, "--coreml-fp16-scan",
                                          help="Core ML FP16: the scan in FP16 too (all on the Neural Engine)."),
    precision: str = typer.Option("fp16", "--precision", help="TensorRT: fp32, fp16 (scan kept FP32) or int8 (Q/DQ)."),
    batch_profile: str | None = typer.Option(None, "--batch-profile", help="TensorRT, with --dynamic-batch: MIN,OPT,MAX."),
    workspace: int | None = typer.Option(None, "--workspace", help="TensorRT builder workspace limit (MiB)."),
    timing_cache: Path | None = typer.Option(None, "--timing-cache", help="TensorRT timing cache file (read, updated)."),
    dla_core: int | None = typer.Option(None, "--dla-core", help="Jetson: build for this DLA core (GPU fallback on)."),
    no_gpu_fallback: bool = typer.Option(False, "--no-gpu-fallback", help="With --dla-core: fail if a layer needs the GPU."),
    plugin_lib: list[Path] = typer.Option([], "--plugin-lib", help="TensorRT plugin library for the tinyvim ops."),
    strongly_typed: bool = typer.Option(True, "--strongly-typed/--no-strongly-typed",
                                        help="TensorRT 10: weak typing with builder precision flags instead."),
    nms: str | None = typer.Option(None, "--nms", help="Detectors: onnx (NonMaxSuppression subgraph; the default), "
                                   "efficient-nms (TensorRT's EfficientNMS_TRT plugin; the default and only NMS "
                                   "of --target trt) or none (raw boxes, scores)."),
    score_threshold: float = typer.Option(0.05, "--score-threshold", help="Detectors: NMS score threshold."),
    iou_threshold: float = typer.Option(0.6, "--iou-threshold", help="Detectors: NMS IoU threshold."),
    max_det: int = typer.Option(100, "--max-det", help="Detectors: detections per image (K of the output)."),
) -> None:
    """Export a model, validate it against PyTorch, and write it only if it passes."""
    from tinyvim_deploy.export.onnx_export import export_onnx
    from tinyvim_deploy.export.validate import print_report
    from tinyvim_deploy.models import get_spec

    target = target.lower()
    nms_config = None
    if get_spec(model).task == "detection":
        from tinyvim_deploy.export.nms import NMSConfig

        nms_config = NMSConfig(score_threshold=score_threshold, iou_threshold=iou_threshold, max_det=max_det)
        if int8 or precision == "int8" and target == "trt":
            raise ExportError("INT8 export of detectors is not implemented yet: export FP32 or FP16.")
        if target == "trt" and nms == "onnx":
            raise ExportError("TensorRT engines of detectors run TensorRT's own NMS: use --nms efficient-nms "
                              "(the default for --target trt) or --nms none.")
        nms = nms or ("efficient-nms" if target == "trt" else "onnx")
    if int8 and calib_data is None:
        raise ExportError("--int8 needs calibration images: pass --calib-data DIR (or a list file).")
    if target not in TARGETS:
        raise ExportError(f"Unknown target {target!r}: choose {', '.join(TARGETS)}.")
    if target == "trt":
        from tinyvim_deploy.export.tensorrt_export import BuildOptions, parse_batch_profile
        from tinyvim_deploy.runtimes.tensorrt import import_tensorrt

        import_tensorrt()  # one line and exit 2 where TensorRT is missing, before anything is written
        precision = "int8" if int8 else precision
        if precision == "int8" and calib_data is None:
            raise ExportError("--precision int8 needs calibration images: pass --calib-data DIR (or a list file).")
        options = BuildOptions(
            precision=precision, profile=parse_batch_profile(batch_profile, None if dynamic_batch else batch),
            strongly_typed=strongly_typed, workspace_mb=workspace, timing_cache=timing_cache, dla_core=dla_core,
            gpu_fallback=not no_gpu_fallback, plugin_libs=tuple(str(p) for p in plugin_lib),
        )
        int8 = precision == "int8"
        int8_profile = "tensorrt"
    if target == "coreml":
        _export_coreml(model, weights, output, input_size, coreml_precision, int8_weights,
                       scan_fp32=not coreml_fp16_scan, w8a8=w8a8, calib_data=calib_data, calib_samples=calib_samples,
                       nms_config=nms_config)
        return
    result = export_onnx(
        model, weights=weights, output=output, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch,
        opset=opset, simplify_graph=not no_simplify, inline=inline_custom_ops, scan_impl=scan_impl, atol=atol,
        photos_dir=photos or default_photos_dir(), include_postprocess=include_postprocess, nms=nms or "onnx",
        nms_config=nms_config,
    )
    if result.report:
        print_report(result.report, console)
    custom = ", ".join(f"{k}×{v}" for k, v in sorted(result.custom_nodes.items())) or (
        "none (inlined)" if inline_custom_ops else "none")
    size_mb = result.path.stat().st_size / 1e6
    console.print(f"wrote {result.path} ({size_mb:.1f} MB, {result.node_count} nodes, custom ops: {custom}, "
                  f"simplifier: {result.metadata['simplifier']}) in {result.export_seconds:.1f} s")
    int8_path = None
    if int8:
        int8_path = _export_int8(result.path, calib_data, samples=calib_samples, method=calib_method,
                                 profile=int8_profile, min_agreement=min_agreement, max_drop=max_drop, holdout=holdout)
    if target == "trt":
        _build_engine(result.path, model, weights, options, int8_path, photos or default_photos_dir())


def _build_engine(onnx_path: Path, model: str, weights, options, int8_path: Path | None, photos_dir) -> None:
    """ONNX (float or Q/DQ) -> validated TensorRT engine + sidecar (export/tensorrt_export.py)."""
    from tinyvim_deploy.export.metadata import read_metadata, spec_from_metadata
    from tinyvim_deploy.export.tensorrt_export import export_tensorrt
    from tinyvim_deploy.export.validate import print_report, validation_inputs
    from tinyvim_deploy.models import create_model, reparameterize

    source = int8_path or onnx_path
    spec, size = spec_from_metadata(read_metadata(str(source)), str(source))
    inputs = validation_inputs(size, [options.profile.opt], spec, photos_dir)
    reference = None if int8_path else reparameterize(create_model(spec.name, weights=weights))
    with err_console.status("TensorRT: building") as status:
        def progress(phase: str, step: int, total: int | None) -> None:
            status.update(f"TensorRT: {phase}" + (f" ({step}/{total})" if total else ""))

        r = export_tensorrt(source, reference, output=None, options=options, inputs=inputs,
                            reference_onnx=int8_path, progress=progress)
    against = "the INT8 Q/DQ model in ONNX Runtime" if int8_path else "PyTorch"
    if r.prepared_check is not None:
        print_report(r.prepared_check, console, f"{options.precision} graph for TensorRT, in ONNX Runtime, vs {against}")
    print_report(r.engine_check, console, f"TensorRT engine ({r.sidecar.gpu_name}) vs {against}")
    size_mb = r.engine.stat().st_size / 1e6
    console.print(f"wrote {r.engine} ({size_mb:.1f} MB, {options.precision}, TensorRT {r.sidecar.tensorrt_version}, "
                  f"{r.sidecar.gpu_name} compute {r.sidecar.compute_capability}, batch {options.profile.min}-"
                  f"{options.profile.max}) and its sidecar in {r.build_seconds:.1f} s")


def _export_coreml(model, weights, output, input_size, precision: str, int8_weights: bool, **options) -> None:
    from tinyvim_deploy.export.coreml_export import export_coreml

    with err_console.status("converting to Core ML"):
        r = export_coreml(model, weights=weights, output=output, input_size=input_size, precision=precision,
                          weights_int8=int8_weights, **options)
    ops = sum(r.op_counts.values())
    flagged = ", ".join(f"{k}×{v}" for k, v in r.flagged_ops.items()) or "none"
    console.print(f"stem-folded normalisation vs PyTorch: max abs diff {r.fold_max_abs_diff:.1e} (Core ML itself "
                  "cannot predict on Linux: validate on a Mac with `tvdeploy bench`/`predict`)")
    quant = ", int8 weights and activations" if r.w8a8 else ", int8 weights" if r.weights_int8 else ""
    fp32 = f", {sum(r.fp32_ops.values())} scan ops kept fp32" if r.precision == "fp16" and r.fp32_ops else ""
    console.print(f"wrote {r.path} ({r.size_mb:.1f} MB, {r.precision}{fp32}{quant}, "
                  f"{ops} ops; ops the Neural Engine does not run: {flagged}) in {r.seconds:.1f} s")


def _export_int8(float_path: Path, calib_data: Path, **options) -> Path:
    from tinyvim_deploy.calibration.int8 import quantize_onnx
    from tinyvim_deploy.reports import agreement_table, sensitivity_table

    with err_console.status("INT8") as status:
        result = quantize_onnx(float_path, calib_data, on_step=lambda step: status.update(f"INT8: {step}"), **options)
    budget = result.budget
    console.print(sensitivity_table(budget))
    rows = [("float vs int8, calibration images", budget.final)]
    if result.holdout is not None:
        rows.append(("float vs int8, held-out images", result.holdout))
    console.print(agreement_table(rows, f"{result.path.name} ({result.method}, {result.profile})"))
    if result.holdout is None:
        console.print("[yellow]note:[/] no images were left for a held-out check; pass more images or fewer "
                      "--calib-samples, or run `tvdeploy compare` on other images.")
    size, float_size = result.path.stat().st_size / 1e6, float_path.stat().st_size / 1e6
    console.print(f"wrote {result.path} ({size:.1f} MB, {float_size / size:.1f}× smaller than float; "
                  f"{len(budget.float_groups)} of {len(budget.groups)} groups kept in float; ranges "
                  f"{'reused from' if result.cache_hit else 'cached in'} {result.cache_path.name}; TensorRT "
                  f"calibration table {result.trt_table_path.name}) in {result.seconds:.1f} s")
    if not budget.met:
        raise ValidationError(f"INT8 could not meet the budget even with every group in float: {result.path}.")
    return result.path


@app.command("eval")
def eval_cmd(
    artifact: str = typer.Argument(..., help="A segmentation or detection artifact (.onnx, …) or model name."),
    data: str = typer.Option(..., "--data", help="Segmentation: folder with images/ and annotations/ (label PNGs). "
                                                 "Detection: a COCO folder (json + images) or synthetic:shapesdet."),
    reduce_zero_label: bool = typer.Option(True, "--reduce-zero-label/--no-reduce-zero-label",
                                           help="ADE20K: label value 0 is ignored, v means class v-1."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Runtime (default: from the file type)."),
    device: str | None = typer.Option(None, "--device"),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint, when ARTIFACT is a model name."),
    input_size: str | None = typer.Option(None, "--input-size",
                                          help="Model name: a fixed input box (as an export has) instead of the "
                                               "official test pipeline's sizes."),
    images: int = typer.Option(200, "--images", help="Detection, synthetic: how many test images."),
    data_seed: int = typer.Option(0, "--data-seed", help="Detection, synthetic: which images."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
) -> None:
    """Segmentation: mIoU, aAcc, per-class IoU. Detection: COCO AP (pycocotools). Same numbers on every runtime."""
    from tinyvim_deploy.evaluation import evaluate_segmentation, pair_images_and_labels
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.predictor import Predictor
    from tinyvim_deploy.reports import eval_table

    options = {"input_size": input_size} if input_size else {}
    detection_data = data.startswith("synthetic:") or any(Path(data).glob("*.json")) or any(
        Path(data).glob("annotations/*.json"))
    total = 0 if detection_data else len(pair_images_and_labels(Path(data)))  # a bad folder: one line, no model load
    with Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights, **options) as predictor:
        if predictor.task == "detection":
            _eval_detection(predictor, artifact, data, images, data_seed, json_path)
            return
        if predictor.task != "segmentation" or detection_data:
            raise ArtifactError(f"{artifact} is a {predictor.task} model and {data} is "
                                f"{'detection' if detection_data else 'segmentation'} data: eval needs a segmentor "
                                "with label maps or a detector with COCO boxes.")
        with _progress() as progress:
            tick = progress(Path(artifact).name, "evaluating")
            done = iter(range(1, total + 1))
            metrics = evaluate_segmentation(predictor, Path(data), reduce_zero_label,
                                            on_image=lambda _: tick and tick(next(done), total))
        console.print(eval_table(metrics, predictor.class_names, f"{artifact} on {data}"))
        if json_path:
            write_json(json_path, {"artifact": str(artifact), "backend": predictor.backend.describe(),
                                   **metrics.as_dict(predictor.class_names)})


def _eval_detection(predictor, artifact: str, data: str, images: int, data_seed: int, json_path) -> None:
    from tinyvim_deploy.coco_eval import evaluate_predictor
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.train_commands import load_detection_data

    size = predictor.backend.input_hw[0]
    dataset = load_detection_data(data, "test", images, size, data_seed)
    with _progress() as progress:
        metrics = evaluate_predictor(predictor, dataset, on_batch=progress(Path(artifact).name, "evaluating"))
    console.print(f"{artifact} ({predictor.backend.describe()}) on {len(dataset)} images of {data}:")
    for row in metrics.table():
        console.print("  " + row, highlight=False)
    if json_path:
        write_json(json_path, {"artifact": str(artifact), "backend": predictor.backend.describe(), **metrics.as_dict(),
                               "area_ranges": metrics.area_ranges})


@app.command("check")
def check_cmd(
    artifact: Path = typer.Argument(..., help="An exported .onnx file (float or INT8 Q/DQ)."),
    target: str = typer.Option("trt", "--target", "-t", help="trt: TensorRT's ONNX operator support."),
    trt_version: str = typer.Option("10.15", "--trt-version", help="TensorRT release to check against."),
    keep_custom_ops: bool = typer.Option(False, "--keep-custom-ops",
                                         help="Check the tinyvim ops as plugin nodes (as with --plugin-lib)."),
) -> None:
    """Static check of every op against the runtime's ONNX support (exit 1 if something is unsupported)."""
    from tinyvim_deploy.export.metadata import load_onnx_file
    from tinyvim_deploy.export.tensorrt_check import check_onnx
    from tinyvim_deploy.reports import check_table

    if target.lower() != "trt":
        raise ExportError(f"No static check for target {target!r}: only trt (Core ML export lists its own ops).")
    report = check_onnx(load_onnx_file(artifact), trt_version, keep_custom_ops=keep_custom_ops)
    console.print(check_table(report, str(artifact)))
    if not report.supported:
        raise typer.Exit(1)


@app.command("compare")
def compare_cmd(
    reference: Path = typer.Argument(..., help="The float .onnx file."),
    candidate: Path = typer.Argument(..., help="The quantized (or otherwise converted) .onnx file."),
    data: Path = typer.Option(..., "--data", help="Image folder (class subfolders give accuracy) or list file."),
    samples: int = typer.Option(500, "--samples", help="Images to compare on (seeded shuffle)."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Top-1/top-5 agreement, logit cosine, accuracy and its drop between two ONNX classifiers."""
    from tinyvim_deploy.calibration.compare import agreement, run_onnx
    from tinyvim_deploy.calibration.data import load_calibration_set
    from tinyvim_deploy.export.metadata import load_onnx_file, read_metadata, spec_from_metadata
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.reports import agreement_table

    spec, hw = spec_from_metadata(read_metadata(load_onnx_file(reference)), str(reference))
    load_onnx_file(candidate)  # a clear error for a bad second file before reading images
    images = load_calibration_set(data, spec, hw, samples=samples, seed=seed, quiet=True)
    result = agreement(run_onnx(reference, images.tensors), run_onnx(candidate, images.tensors), images.labels)
    console.print(agreement_table([(f"{reference.name} vs {candidate.name}", result)], f"compare on {data}"))
    if json_path:
        write_json(json_path, {"reference": str(reference), "candidate": str(candidate), "data": str(data),
                               **result.as_dict()})


@app.command("validate")
def validate_cmd(
    artifact: Path = typer.Argument(..., help="An exported .onnx file."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (default: from metadata)."),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint the file was exported from."),
    atol: float = typer.Option(1e-4, "--atol"),
    photos: Path | None = typer.Option(None, "--photos", help="Folder of images for validation."),
) -> None:
    """Re-run the ONNX Runtime vs PyTorch check on an exported file."""
    from tinyvim_deploy.export.metadata import load_onnx_file, read_metadata
    from tinyvim_deploy.export.onnx_export import onnx_input_hw
    from tinyvim_deploy.export.validate import print_report, validate_onnx, validation_inputs
    from tinyvim_deploy.models import create_model

    proto = load_onnx_file(artifact)
    meta = read_metadata(proto)
    name = model or meta.get("model")
    if not name:
        raise ArtifactError(f"{artifact} has no tinyvim-deploy metadata: pass --model.")
    torch_model = create_model(name, weights=weights)
    if torch_model.checkpoint and meta.get("weights_sha256") not in (None, torch_model.checkpoint.sha256):
        console.print("[yellow]note:[/] these weights differ from the ones recorded in the file's metadata")
    if meta.get("postprocess") == "resize+argmax":  # the file outputs labels: compare with labels
        from tinyvim_deploy.models.segmentors import WithLabelOutput

        torch_model = WithLabelOutput(torch_model)
    dynamic = meta.get("batch") == "dynamic" or proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0
    batches = [1, 3] if dynamic else [proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value]
    inputs = validation_inputs(onnx_input_hw(proto), batches, torch_model.spec, photos or default_photos_dir())
    report = validate_onnx(artifact, torch_model, inputs, atol=atol, task=torch_model.spec.task)
    print_report(report, console, title=f"{artifact.name}: ONNX Runtime vs PyTorch")
    if not report.passed:
        raise ValidationError(f"{artifact} does not match PyTorch within atol {atol:g}.")


@app.command("predict")
def predict_cmd(
    artifact: str = typer.Argument(..., help="An exported file (.onnx) or a model name."),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    topk: int = typer.Option(5, "--topk", "-k", help="Classes to show per image."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Runtime (default: from the file type)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, … (backend-specific)."),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint, when ARTIFACT is a model name."),
    labels: Path | None = typer.Option(None, "--labels", help="Class names, one per line."),
    batch: int = typer.Option(8, "--batch", help="Images per inference call."),
    save_dir: Path | None = typer.Option(None, "--save-dir", help="Segmentation: overlays and label PNGs; "
                                                                    "detection: images with their boxes drawn."),
    conf: float = typer.Option(0.25, "--conf", help="Detection: show detections scoring at least this."),
    slide: bool = typer.Option(False, "--slide", help="Segmentation: sliding windows of the artifact's input size."),
    stride: str | None = typer.Option(None, "--stride", help="With --slide: N or HxW (default 2/3 of the window)."),
) -> None:
    """Classify, segment or detect. A file that cannot be read is reported and skipped; the exit code is then 1."""
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.images import collect_images
    from tinyvim_deploy.predictor import Predictor
    from tinyvim_deploy.reports import detection_table, prediction_table, segmentation_table

    if batch < 1:
        raise ArtifactError(f"Batch size must be at least 1, got {batch}.")
    paths = collect_images(images)
    if not paths:
        raise ImageError(f"No image files found in {', '.join(map(str, images))}.")
    predictor = Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights, labels=labels,
                          topk=topk, score_threshold=conf)
    decoded, errors = [], []
    for path in paths:
        try:
            decoded.append(predictor.decode(path))
        except ImageError as e:
            errors.append({"source": str(path), "error": str(e)})
            err_console.print(f"[yellow]skipped:[/] {e}", highlight=False, soft_wrap=True)
    if predictor.task == "segmentation":
        from tinyvim_deploy.models import parse_input_size

        step = parse_input_size(stride, None) if stride else None
        results = predictor.segment(decoded, slide=slide, stride=step)
        for result, (rgb, _) in zip(results, decoded):
            console.print(segmentation_table(result, topk))
            if save_dir:
                _save_segmentation(save_dir, result, rgb)
    elif predictor.task == "detection":
        results = predictor.detect(decoded, batch_size=batch)
        for result, (rgb, _) in zip(results, decoded):
            console.print(detection_table(result))
            if save_dir:
                _save_image(Path(save_dir) / f"{Path(result.source).stem}_boxes.jpg", result.draw(rgb))
    else:
        if save_dir or slide:
            raise ArtifactError("--save-dir and --slide are for segmentation and detection; this model is a "
                                "classifier.")
        results = predictor.classify(decoded, batch_size=batch)
        for result in results:
            console.print(prediction_table(result))
    if json_path:
        write_json(json_path, {"artifact": str(artifact), "backend": predictor.backend.describe(),
                               "results": [r.as_dict() for r in results], "errors": errors})
    predictor.close()
    if errors:
        err_console.print(f"{len(errors)} of {len(paths)} files could not be read.")
        raise typer.Exit(1)


def _save_image(path: Path, rgb) -> None:
    from PIL import Image

    from tinyvim_deploy.fileio import atomic_output

    with atomic_output(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG" if path.suffix == ".jpg" else "PNG", quality=92)


def _save_segmentation(save_dir: Path, result, rgb) -> None:
    """``<stem>_overlay.png`` (image blended with class colours) and ``<stem>_labels.png`` (class index per pixel)."""
    from PIL import Image

    from tinyvim_deploy.fileio import atomic_output

    stem = Path(result.source).stem
    for suffix, array in (("overlay", result.overlay(rgb)), ("labels", result.labels)):
        with atomic_output(Path(save_dir) / f"{stem}_{suffix}.png") as tmp:
            Image.fromarray(array).save(tmp, format="PNG")


@app.command("bench")
def bench_cmd(
    artifact: str = typer.Argument("tinyvim-s", help="An exported file or a model name."),
    compare: str | None = typer.Option(None, "--compare", help="Formats to compare, e.g. torch,onnx (model name)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Runtime (default: from the file type)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, … (backend-specific)."),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint, for a model name."),
    batch: int = typer.Option(1, "--batch"),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs first."),
    iterations: int = typer.Option(100, "--iterations", "-n", help="Timed runs (ignored with --duration)."),
    duration: float | None = typer.Option(None, "--duration", help="Time for this many seconds instead."),
    images: list[Path] | None = typer.Option(None, "--images", help="Time end to end on these images/folders."),
    input_size: str | None = typer.Option(None, "--input-size", help="N or HxW, for a model name."),
    export_dir: Path | None = typer.Option(None, "--export-dir", help="Keep --compare's exports here."),
    fp16: bool = typer.Option(False, "--fp16", help="torch on CUDA: FP16 autocast."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="torch on CUDA, TensorRT: capture and replay a CUDA graph."),
    compile_model: bool = typer.Option(False, "--compile", help="torch: torch.compile the model."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Latency percentiles, throughput, load time and memory for one artifact, or a table across formats."""
    import tempfile

    from tinyvim_deploy.environment import environment_report
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.images import collect_images
    from tinyvim_deploy.predictor import Predictor
    from tinyvim_deploy.profiling import benchmark, compare_formats
    from tinyvim_deploy.reports import bench_table, compare_table

    decoded = [Predictor.decode(p)[0] for p in collect_images(images)] if images else None
    if images and not decoded:
        raise ImageError(f"No image files found in {', '.join(map(str, images))}.")
    plan = {"batch": batch, "warmup": warmup, "iterations": iterations, "duration": duration, "images": decoded}
    options = {"fp16": fp16, "cuda_graph": cuda_graph, "compile": compile_model}
    if not compare:  # load first: a bad artifact is reported before any progress bar is drawn
        predictor = Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights,
                              input_size=input_size, **{k: v for k, v in options.items() if v})
    with _progress() as progress:
        if compare:
            formats = [f.strip().lower() for f in compare.split(",") if f.strip()]
            with tempfile.TemporaryDirectory(prefix="tvdeploy-bench-") as tmp:
                rows = compare_formats(artifact, formats, weights=weights, workdir=export_dir or tmp, device=device,
                                       threads=threads, input_size=input_size, on_format=progress, **plan)
            title = f"{artifact}: {', '.join(formats)} · batch {batch} · {'end to end' if decoded else 'inference'}"
            console.print(compare_table(rows, title))
            payload = {"model": artifact, "rows": [r.as_dict() for r in rows]}
        else:
            result = benchmark(predictor, progress=progress(str(artifact)), **plan)
            predictor.close()
            console.print(bench_table(result))
            payload = {"result": result.as_dict()}
    if json_path:
        write_json(json_path, {"environment": environment_report(), **payload})


@contextlib.contextmanager
def _progress():
    """A transient rich progress bar on stderr; yields ``for_run(label)`` -> a per-run update callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:

        def for_run(label: str, verb: str = "timing"):
            task = bar.add_task(f"{verb} {label}", total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        yield for_run
