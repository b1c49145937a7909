"""``tvdeploy info``: the runtimes installed and the hardware found."""

from __future__ import annotations

from rich.table import Table

from tinyvim_deploy.cli.console import console


def info_cmd() -> None:
    """Versions of the runtimes this toolkit can use, and the CPU/GPU found."""
    from tinyvim_deploy.environment import environment_report

    table = Table(title="environment", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in environment_report().items():
        table.add_row(key, value)
    console.print(table)
