"""CLI commands that need the export/runtime machinery (registered on ``tinyvim_deploy.cli.app``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tinyvim_deploy.cli import app, console
from tinyvim_deploy.errors import ArtifactError, ExportError, ValidationError

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
    target: str = typer.Option("onnx", "--target", "-t", help="onnx (trt and coreml: see README)."),
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
) -> None:
    """Export a model, validate it against PyTorch, and write it only if it passes."""
    from tinyvim_deploy.export.onnx_export import export_onnx
    from tinyvim_deploy.export.validate import print_report

    target = target.lower()
    if target not in TARGETS:
        raise ExportError(f"Unknown target {target!r}: choose {', '.join(TARGETS)}.")
    if target != "onnx":
        raise ExportError(f"Target {target!r} is not implemented yet (issue 6); export to onnx and convert it.")
    result = export_onnx(
        model, weights=weights, output=output, input_size=input_size, batch=batch, dynamic_batch=dynamic_batch,
        opset=opset, simplify_graph=not no_simplify, inline=inline_custom_ops, scan_impl=scan_impl, atol=atol,
        photos_dir=photos or default_photos_dir(),
    )
    if result.report:
        print_report(result.report, console)
    custom = ", ".join(f"{k}×{v}" for k, v in sorted(result.custom_nodes.items())) or "none (inlined)"
    size_mb = result.path.stat().st_size / 1e6
    console.print(f"wrote {result.path} ({size_mb:.1f} MB, {result.node_count} nodes, custom ops: {custom}, "
                  f"simplifier: {result.metadata['simplifier']}) in {result.export_seconds:.1f} s")


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
    dynamic = meta.get("batch") == "dynamic" or proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0
    batches = [1, 3] if dynamic else [proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value]
    inputs = validation_inputs(onnx_input_hw(proto), batches, torch_model.spec, photos or default_photos_dir())
    report = validate_onnx(artifact, torch_model, inputs, atol=atol, task=torch_model.spec.task)
    print_report(report, console, title=f"{artifact.name}: ONNX Runtime vs PyTorch")
    if not report.passed:
        raise ValidationError(f"{artifact} does not match PyTorch within atol {atol:g}.")
