"""``tvdeploy compare``: agreement and accuracy between two ONNX classifiers (float vs INT8, say)."""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, json_destination


def compare_cmd(
    reference: Path = typer.Argument(..., help="The float .onnx file."),
    candidate: Path = typer.Argument(..., help="The quantized (or otherwise converted) .onnx file."),
    data: Path = typer.Option(..., "--data", help="Image folder (class subfolders give accuracy) or list file."),
    samples: int = typer.Option(500, "--samples", help="Images to compare on (seeded shuffle)."),
    seed: int = typer.Option(0, "--seed"),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here (- for stdout)."),
) -> None:
    """Top-1/top-5 agreement, logit cosine, accuracy and its drop between two ONNX classifiers."""
    from tinyvim_deploy.calibration.compare import agreement, run_onnx
    from tinyvim_deploy.calibration.data import load_calibration_set
    from tinyvim_deploy.export.metadata import load_onnx_file, read_metadata, spec_from_metadata
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.reports import agreement_table

    json_out = json_destination(json_path)
    spec, hw = spec_from_metadata(read_metadata(load_onnx_file(reference)), str(reference))
    load_onnx_file(candidate)  # a clear error for a bad second file before reading images
    images = load_calibration_set(data, spec, hw, samples=samples, seed=seed, quiet=True)
    result = agreement(run_onnx(reference, images.tensors), run_onnx(candidate, images.tensors), images.labels)
    console.print(agreement_table([(f"{reference.name} vs {candidate.name}", result)], f"compare on {data}"))
    if json_out:
        write_json(json_out, {"reference": str(reference), "candidate": str(candidate), "data": str(data),
                              **result.as_dict()})
