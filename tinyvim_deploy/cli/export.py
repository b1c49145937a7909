"""``tvdeploy export``: PyTorch to ONNX (optionally INT8), a TensorRT engine or a Core ML package.

The flags are checked and settled in one place, :mod:`tinyvim_deploy.export.options`; this module reads
them from the command line, dispatches on the target and prints what was written.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, default_photos_dir, err_console, note_random_weights
from tinyvim_deploy.errors import ValidationError
from tinyvim_deploy.export.options import (
    CalibMethod,
    CoreMLPrecision,
    ExportOptions,
    Int8Profile,
    NMSKind,
    ScanImpl,
    Target,
    TensorRTPrecision,
)

GENERAL, ONNX, INT8, TENSORRT, COREML, DETECTION = "General", "ONNX", "INT8", "TensorRT", "Core ML", "Detection"


def export_cmd(
    ctx: typer.Context,
    # General
    model: str = typer.Option("tinyvim-s", "--model", "-m", help="Model name (see `tvdeploy models`).",
                              rich_help_panel=GENERAL),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Official checkpoint (any layout); without it "
                                        "the model has random weights.", rich_help_panel=GENERAL),
    target: Target = typer.Option(Target.onnx, "--target", "-t", case_sensitive=False,
                                  help="trt: a TensorRT engine; coreml: a Core ML package.", rich_help_panel=GENERAL),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file (default from model and size).",
                                       rich_help_panel=GENERAL),
    input_size: str | None = typer.Option(None, "--input-size", help="N or HxW, multiples of 32.",
                                          rich_help_panel=GENERAL),
    # ONNX (also the graph a TensorRT engine is built from)
    batch: int = typer.Option(1, "--batch", help="Static batch size.", rich_help_panel=ONNX),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Symbolic batch dimension.", rich_help_panel=ONNX),
    opset: int = typer.Option(20, "--opset", help="ai.onnx opset (18-23).", rich_help_panel=ONNX),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxsim/onnxslim.", rich_help_panel=ONNX),
    inline_custom_ops: bool = typer.Option(False, "--inline-custom-ops", help="Flat graph, no tinyvim domain.",
                                           rich_help_panel=ONNX),
    scan_impl: ScanImpl = typer.Option(ScanImpl.scan, "--scan-impl", case_sensitive=False,
                                       help="SelectiveScan body.", rich_help_panel=ONNX),
    atol: float = typer.Option(1e-4, "--atol", help="Validation tolerance (max abs diff).", rich_help_panel=ONNX),
    photos: Path | None = typer.Option(None, "--photos", help="Folder of images for validation.", rich_help_panel=ONNX),
    include_postprocess: bool = typer.Option(False, "--include-postprocess", rich_help_panel=ONNX,
                                             help="Segmentors: resize + argmax in the graph (int32 label map out)."),
    # INT8
    int8: bool = typer.Option(False, "--int8", help="Also write an INT8 QDQ model (needs --calib-data).",
                              rich_help_panel=INT8),
    calib_data: Path | None = typer.Option(None, "--calib-data", help="Image folder (class subfolders ok) or list "
                                           "file.", rich_help_panel=INT8),
    calib_samples: int = typer.Option(256, "--calib-samples", help="Images used for calibration.",
                                      rich_help_panel=INT8),
    calib_method: CalibMethod = typer.Option(CalibMethod.entropy, "--calib-method", case_sensitive=False,
                                             help="How activation ranges are chosen.", rich_help_panel=INT8),
    int8_profile: Int8Profile = typer.Option(Int8Profile.ort_cpu, "--int8-profile", case_sensitive=False,
                                             help="Q/DQ placement (--target trt always uses tensorrt).",
                                             rich_help_panel=INT8),
    min_agreement: float = typer.Option(0.99, "--min-agreement", help="Top-1 agreement with float to keep.",
                                        rich_help_panel=INT8),
    max_drop: float = typer.Option(1.0, "--max-drop", help="Accuracy drop allowed (points), when labels exist.",
                                   rich_help_panel=INT8),
    holdout: int = typer.Option(256, "--holdout", help="Held-out images for the final INT8 check.",
                                rich_help_panel=INT8),
    # TensorRT
    precision: TensorRTPrecision = typer.Option(TensorRTPrecision.fp16, "--precision", case_sensitive=False,
                                                help="fp16 keeps the scan in FP32; int8 uses Q/DQ (--calib-data).",
                                                rich_help_panel=TENSORRT),
    batch_profile: str | None = typer.Option(None, "--batch-profile", help="With --dynamic-batch: MIN,OPT,MAX.",
                                             rich_help_panel=TENSORRT),
    workspace: int | None = typer.Option(None, "--workspace", help="Builder workspace limit (MiB).",
                                         rich_help_panel=TENSORRT),
    timing_cache: Path | None = typer.Option(None, "--timing-cache", help="Timing cache file (read, updated).",
                                             rich_help_panel=TENSORRT),
    dla_core: int | None = typer.Option(None, "--dla-core", help="Jetson: build for this DLA core (GPU fallback on).",
                                        rich_help_panel=TENSORRT),
    no_gpu_fallback: bool = typer.Option(False, "--no-gpu-fallback", help="With --dla-core: fail if a layer needs "
                                         "the GPU.", rich_help_panel=TENSORRT),
    plugin_lib: list[Path] = typer.Option([], "--plugin-lib", help="Plugin library for the tinyvim ops.",
                                          rich_help_panel=TENSORRT),
    strongly_typed: bool = typer.Option(True, "--strongly-typed/--no-strongly-typed", rich_help_panel=TENSORRT,
                                        help="TensorRT 10: weak typing with builder precision flags instead."),
    # Core ML
    coreml_precision: CoreMLPrecision = typer.Option(CoreMLPrecision.fp16, "--coreml-precision", case_sensitive=False,
                                                     help="Compute precision.", rich_help_panel=COREML),
    int8_weights: bool = typer.Option(False, "--int8-weights", help="INT8 per-channel weights (≈2× smaller).",
                                      rich_help_panel=COREML),
    w8a8: bool = typer.Option(False, "--w8a8", help="macOS: INT8 weights and activations (--calib-data).",
                              rich_help_panel=COREML),
    coreml_fp16_scan: bool = typer.Option(False, "--coreml-fp16-scan", rich_help_panel=COREML,
                                          help="FP16: the scan in FP16 too (all on the Neural Engine)."),
    # Detection
    nms: NMSKind | None = typer.Option(None, "--nms", case_sensitive=False, rich_help_panel=DETECTION,
                                       help="onnx: a NonMaxSuppression subgraph (the default); efficient-nms: "
                                            "TensorRT's EfficientNMS_TRT plugin (the default and only NMS of --target "
                                            "trt); none: raw boxes and scores."),
    score_threshold: float = typer.Option(0.05, "--score-threshold", help="NMS score threshold.",
                                          rich_help_panel=DETECTION),
    iou_threshold: float = typer.Option(0.6, "--iou-threshold", help="NMS IoU threshold.", rich_help_panel=DETECTION),
    max_det: int = typer.Option(100, "--max-det", help="Detections per image (K of the output).",
                                rich_help_panel=DETECTION),
) -> None:
    """Export a model, validate it against PyTorch, and write it only if it passes."""
    from tinyvim_deploy.models import get_spec

    typed = [name for name in ctx.params if _typed(ctx, name)]
    task = get_spec(model).task  # an unknown model: one line
    opts = ExportOptions.resolve(ctx.params, task=task, given=typed)
    if opts.weights is None:
        note_random_weights(opts.model)
    if opts.target is Target.coreml:
        _export_coreml(opts, task)
        return
    build_options = None
    if opts.target is Target.trt:
        from tinyvim_deploy.runtimes.tensorrt import import_tensorrt

        import_tensorrt()  # one line and exit 2 where TensorRT is missing, before anything is written
        build_options = opts.tensorrt_build_options()
    onnx_path, int8_path = _export_onnx(opts, task)
    if build_options is not None:
        _build_engine(onnx_path, opts, build_options, int8_path)


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user set this flag (on the command line), rather than leaving its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _export_onnx(opts: ExportOptions, task: str) -> tuple[Path, Path | None]:
    """The validated ONNX file and, with INT8, its Q/DQ sibling."""
    from tinyvim_deploy.export.onnx_export import export_onnx
    from tinyvim_deploy.export.validate import print_report

    result = export_onnx(
        opts.model, weights=opts.weights, output=opts.output, input_size=opts.input_size, batch=opts.batch,
        dynamic_batch=opts.dynamic_batch, opset=opts.opset, simplify_graph=not opts.no_simplify,
        inline=opts.inline_custom_ops, scan_impl=opts.scan_impl.value, atol=opts.atol,
        photos_dir=opts.photos or default_photos_dir(), include_postprocess=opts.include_postprocess,
        nms=opts.nms.value if opts.nms else "onnx", nms_config=opts.nms_config(task),
    )
    if result.report:
        print_report(result.report, console)
    custom = ", ".join(f"{k}×{v}" for k, v in sorted(result.custom_nodes.items())) or (
        "none (inlined)" if opts.inline_custom_ops else "none")
    size_mb = result.path.stat().st_size / 1e6
    console.print(f"wrote {result.path} ({size_mb:.1f} MB, {result.node_count} nodes, custom ops: {custom}, "
                  f"simplifier: {result.metadata['simplifier']}) in {result.export_seconds:.1f} s")
    int8_path = _export_int8(result.path, opts) if opts.int8 else None
    return result.path, int8_path


def _build_engine(onnx_path: Path, opts: ExportOptions, options, int8_path: Path | None) -> None:
    """ONNX (float or Q/DQ) -> validated TensorRT engine + sidecar (export/tensorrt_export.py)."""
    from tinyvim_deploy.export.metadata import read_metadata, spec_from_metadata
    from tinyvim_deploy.export.tensorrt_export import export_tensorrt
    from tinyvim_deploy.export.validate import print_report, validation_inputs
    from tinyvim_deploy.models import create_model, reparameterize

    source = int8_path or onnx_path
    spec, size = spec_from_metadata(read_metadata(str(source)), str(source))
    inputs = validation_inputs(size, [options.profile.opt], spec, opts.photos or default_photos_dir())
    reference = None if int8_path else reparameterize(create_model(spec.name, weights=opts.weights))
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


def _export_coreml(opts: ExportOptions, task: str) -> None:
    from tinyvim_deploy.export.coreml_export import export_coreml

    with err_console.status("converting to Core ML"):
        r = export_coreml(opts.model, weights=opts.weights, output=opts.output, input_size=opts.input_size,
                          precision=opts.coreml_precision.value, weights_int8=opts.int8_weights,
                          scan_fp32=not opts.coreml_fp16_scan, w8a8=opts.w8a8, calib_data=opts.calib_data,
                          calib_samples=opts.calib_samples, nms_config=opts.nms_config(task))
    ops = sum(r.op_counts.values())
    flagged = ", ".join(f"{k}×{v}" for k, v in r.flagged_ops.items()) or "none"
    console.print(f"stem-folded normalisation vs PyTorch: max abs diff {r.fold_max_abs_diff:.1e} (Core ML itself "
                  "cannot predict on Linux: validate on a Mac with `tvdeploy bench`/`predict`)")
    quant = ", int8 weights and activations" if r.w8a8 else ", int8 weights" if r.weights_int8 else ""
    fp32 = f", {sum(r.fp32_ops.values())} scan ops kept fp32" if r.precision == "fp16" and r.fp32_ops else ""
    console.print(f"wrote {r.path} ({r.size_mb:.1f} MB, {r.precision}{fp32}{quant}, "
                  f"{ops} ops; ops the Neural Engine does not run: {flagged}) in {r.seconds:.1f} s")


def _export_int8(float_path: Path, opts: ExportOptions) -> Path:
    from tinyvim_deploy.calibration.int8 import quantize_onnx
    from tinyvim_deploy.reports import agreement_table, sensitivity_table

    with err_console.status("INT8") as status:
        result = quantize_onnx(float_path, opts.calib_data, samples=opts.calib_samples, method=opts.calib_method.value,
                               profile=opts.int8_profile.value, min_agreement=opts.min_agreement,
                               max_drop=opts.max_drop, holdout=opts.holdout,
                               on_step=lambda step: status.update(f"INT8: {step}"))
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
