"""``tvdeploy models``: the registry as a table."""

from __future__ import annotations

from rich.table import Table

from tinyvim_deploy.cli.console import console


def models_cmd() -> None:
    """List the models this toolkit can build."""
    from tinyvim_deploy.models import get_spec, list_models
    from tinyvim_deploy.tasks import get_task

    table = Table(title="tinyvim-deploy models")
    for col in ("name", "task", "params", "GMACs", "default input", "preprocessing", "classes"):
        table.add_column(col, justify="right" if col in ("params", "GMACs", "classes") else "left")
    for name in list_models():
        s = get_spec(name)
        c, h, w = s.input_size
        table.add_row(
            name, s.task, f"{s.params / 1e6:.2f} M", f"{s.macs / 1e9:.3f}", f"{c}x{h}x{w}",
            get_task(s.task).describe_preprocessing(s), str(s.num_classes),
        )
    console.print(table)
