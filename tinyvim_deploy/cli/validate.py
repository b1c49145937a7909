"""``tvdeploy validate``: re-run the export's ONNX Runtime vs PyTorch check on an exported file.

The comparison needs the weights the file was exported from. Without ``--weights`` they come from the
file's metadata: the export records their sha256 (and may record their path); a recorded path is used
when it still holds the same bytes. Otherwise the command refuses, saying which weights to pass: comparing
against freshly built random weights would fail on a good file.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, default_photos_dir
from tinyvim_deploy.errors import ArtifactError, ValidationError

RANDOM_INIT = "none"  # how the export records "no --weights" in weights_sha256 ("none (random init)")


def recorded_weights(meta: dict[str, str], artifact: Path) -> Path:
    """The checkpoint recorded in the file's metadata, or a one-line error saying which ``--weights`` to pass."""
    from tinyvim_deploy.fileio import file_sha256

    sha = meta.get("weights_sha256")
    if not sha:
        raise ArtifactError(f"{artifact} does not record its weights: pass --weights with the checkpoint it was "
                            "exported from.")
    if sha.startswith(RANDOM_INIT):
        # create_model does not seed its initialisation, so these weights cannot be rebuilt.
        raise ArtifactError(f"{artifact} was exported with random weights (no --weights), which cannot be rebuilt: "
                            "export it again with --weights CKPT to validate it.")
    path = meta.get("weights_path")
    if path and Path(path).is_file() and file_sha256(path) == sha:
        return Path(path)
    raise ArtifactError(f"{artifact} was exported from the checkpoint with sha256 {sha[:16]}…: pass it with "
                        f"--weights{f' (it was {path})' if path else ''}.")


def validate_cmd(
    artifact: Path = typer.Argument(..., help="An exported .onnx file."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name (default: from metadata)."),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint the file was exported from "
                                        "(default: the one its metadata records)."),
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
    weights = weights or recorded_weights(meta, artifact)
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
