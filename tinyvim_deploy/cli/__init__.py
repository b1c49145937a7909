"""``tvdeploy``: the command line (typer + rich).

This root module builds ``app`` and registers every command, one module each; no command module imports
this one, so ``import tinyvim_deploy.cli`` alone gives the complete CLI (for ``typer.main.get_command``,
``CliRunner`` and the docs in docs/cli.md). Commands import their heavy libraries (torch, onnx, the
runtimes) when they run, so ``tvdeploy --version`` and ``tvdeploy --help`` stay fast.

User errors (our typed exceptions) print one line on stderr and exit with the error's code (2 for
bad input, 1 for a failed validation); no traceback.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperOption

from tinyvim_deploy import __version__
from tinyvim_deploy.cli import bench, check, compare, evaluate, export, info, models, predict, train, validate
from tinyvim_deploy.cli.console import begin_invocation, console, print_error, print_notes
from tinyvim_deploy.errors import TinyViMDeployError

# Help panels, in the order a user meets them.
EXPORT, RUN, EVALUATE, TRAIN, INFO = "Export", "Run", "Evaluate", "Train", "Info"

app = typer.Typer(
    name="tvdeploy",
    help="Deploy TinyViM models: export to ONNX, validate, predict and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"tinyvim-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version."),
) -> None:
    """Deploy TinyViM models: export to ONNX, validate, predict and benchmark."""


app.command("export", rich_help_panel=EXPORT)(export.export_cmd)
app.command("validate", rich_help_panel=EXPORT)(validate.validate_cmd)
app.command("check", rich_help_panel=EXPORT)(check.check_cmd)
app.command("predict", rich_help_panel=RUN)(predict.predict_cmd)
app.command("bench", rich_help_panel=RUN)(bench.bench_cmd)
app.command("eval", rich_help_panel=EVALUATE)(evaluate.eval_cmd)
app.command("compare", rich_help_panel=EVALUATE)(compare.compare_cmd)
# One command, two names: `train` reads as training from scratch, `distill` as training with a teacher.
app.command("train", rich_help_panel=TRAIN)(train.train_cmd)
app.command("distill", rich_help_panel=TRAIN)(train.train_cmd)
app.command("models", rich_help_panel=INFO)(models.models_cmd)
app.command("info", rich_help_panel=INFO)(info.info_cmd)


def _hide_flag_types() -> None:
    """typer's rich help prints ``<bool>`` beside every on/off flag, which takes no value: show nothing there."""
    show_type = TyperOption.display_type_rich
    if getattr(show_type, "_hides_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx) -> str | None:
        return None if self.is_flag or self.count else show_type(self, ctx)

    display_type_rich._hides_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tvdeploy`` console script (``argv`` defaults to ``sys.argv[1:]``)."""
    begin_invocation()
    try:
        app(args=argv, prog_name="tvdeploy")  # standalone: click reports usage errors with exit 2
    except TinyViMDeployError as e:
        if e.exit_code != 2:  # a user error stays one line; after a failed check, the notes still help
            print_notes()
        print_error(str(e))
        sys.exit(e.exit_code)
    except SystemExit:  # every normal end: typer exits with the command's code
        print_notes()
        raise
    print_notes()
