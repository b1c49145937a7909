"""``tvdeploy check``: a static check of an ONNX file against TensorRT's ONNX operator support."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console


class CheckTarget(str, enum.Enum):
    trt = "trt"  # the only runtime with a static checker (Core ML export lists its own ops)


def check_cmd(
    artifact: Path = typer.Argument(..., help="An exported .onnx file (float or INT8 Q/DQ)."),
    target: CheckTarget = typer.Option(CheckTarget.trt, "--target", "-t", case_sensitive=False,
                                       help="trt: TensorRT's ONNX operator support."),
    trt_version: str = typer.Option("10.15", "--trt-version", help="TensorRT release to check against."),
    keep_custom_ops: bool = typer.Option(False, "--keep-custom-ops",
                                         help="Check the tinyvim ops as plugin nodes (as with --plugin-lib)."),
) -> None:
    """Static check of every op against the runtime's ONNX support (exit 1 if something is unsupported)."""
    from tinyvim_deploy.export.metadata import load_onnx_file
    from tinyvim_deploy.export.tensorrt_check import check_onnx
    from tinyvim_deploy.reports import check_table

    report = check_onnx(load_onnx_file(artifact), trt_version, keep_custom_ops=keep_custom_ops)
    console.print(check_table(report, str(artifact)))
    if not report.supported:
        raise typer.Exit(1)
