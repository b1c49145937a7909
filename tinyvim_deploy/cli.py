"""``tvdeploy``: the command line (typer + rich).

User errors (our typed exceptions) print one line on stderr and exit with the error's code (2 for
bad input, 1 for a failed validation); no traceback. Commands import what they need lazily so that
``tvdeploy --version`` and ``tvdeploy models`` stay fast.
"""

from __future__ import annotations

import sys

import rich.markup
import typer
from rich.console import Console
from rich.table import Table

from tinyvim_deploy import __version__
from tinyvim_deploy.errors import TinyViMDeployError

app = typer.Typer(
    name="tvdeploy",
    help="Deploy TinyViM models: export to ONNX, validate, predict and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, `| tee`) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"tinyvim-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version."),
) -> None:
    """Deploy TinyViM models: export to ONNX, validate, predict and benchmark."""


@app.command("models")
def models_cmd() -> None:
    """List the models this toolkit can build."""
    from tinyvim_deploy.models import get_spec, list_models

    table = Table(title="tinyvim-deploy models")
    for col in ("name", "task", "params", "GMACs", "default input", "preprocessing", "classes"):
        table.add_column(col, justify="right" if col in ("params", "GMACs", "classes") else "left")
    for name in list_models():
        s = get_spec(name)
        c, h, w = s.input_size
        table.add_row(
            name, s.task, f"{s.params / 1e6:.2f} M", f"{s.macs / 1e9:.3f}", f"{c}x{h}x{w}",
            f"{s.resize_mode} to {s.size_multiple}, {s.interpolation}" if s.task == "segmentation"
            else f"letterbox, {s.interpolation}" if s.task == "detection"
            else f"crop {s.crop_pct} {s.interpolation}", str(s.num_classes),
        )
    console.print(table)


@app.command("info")
def info_cmd() -> None:
    """Versions of the runtimes this toolkit can use, and the CPU/GPU found."""
    from tinyvim_deploy.environment import environment_report

    table = Table(title="environment", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in environment_report().items():
        table.add_row(key, value)
    console.print(table)


def _register_optional_commands() -> None:
    """Commands that live in their own modules (export/validate/predict/bench)."""
    from tinyvim_deploy import commands, train_commands  # noqa: F401  (register on ``app``)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tvdeploy`` console script."""
    _register_optional_commands()
    try:
        app(args=argv, prog_name="tvdeploy")  # standalone: click reports usage errors with exit 2
    except TinyViMDeployError as e:
        err_console.print(f"[bold red]error:[/] {rich.markup.escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
