"""The CLI reference (docs/cli.md) as Markdown, rendered from the click command that typer builds.

Like ``typer … utils docs``, but with the commands and each command's options grouped under the same
panels as ``--help``. It takes the command as an argument (it does not import the root), so it is a leaf
too; ``docs/gen_cli.py`` writes the file and a test checks that the file is current.
"""

from __future__ import annotations

import inspect

OTHER = "Options"  # typer's panel for options without a rich_help_panel


def render_markdown(group, name: str = "tvdeploy") -> str:
    """``group``: ``typer.main.get_command(app)`` (a click group; typer vendors click, so no click types here)."""
    root = group.context_class(group, info_name=name)
    lines = [f"# `{name}` command-line reference", "",
             "<!-- Generated from tinyvim_deploy/cli by `python docs/gen_cli.py`: do not edit by hand. -->", ""]
    lines += _command_body(group, root, name)
    lines += ["## Commands", ""]
    commands = [group.get_command(root, n) for n in group.list_commands(root)]
    for panel, members in _panels(commands, lambda c: getattr(c, "rich_help_panel", None) or "Commands").items():
        lines += [f"**{panel}**", ""]
        lines += [f"- [`{name} {c.name}`](#{name}-{c.name}): {c.get_short_help_str(limit=200)}" for c in members]
        lines.append("")
    for command in commands:
        ctx = command.context_class(command, info_name=command.name, parent=root)
        lines += [f"## `{name} {command.name}`", ""]
        lines += _command_body(command, ctx, f"{name} {command.name}")
    return "\n".join(lines).rstrip() + "\n"


def _command_body(command, ctx, call: str) -> list[str]:
    lines = [inspect.cleandoc(command.help or ""), ""] if command.help else []
    lines += ["```console", f"$ {call} {' '.join(command.collect_usage_pieces(ctx))}", "```", ""]
    arguments = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
    if arguments:
        lines += ["**Arguments**", ""]
        for param in arguments:
            record = param.get_help_record(ctx)
            if record:
                lines.append(_item(*record))
        lines.append("")
    options = [p for p in command.get_params(ctx) if p.param_type_name == "option" and not p.hidden]
    for panel, members in _panels(options, lambda p: getattr(p, "rich_help_panel", None) or OTHER).items():
        lines += [f"**{panel}{'' if panel == OTHER else ' options'}**", ""]
        for param in members:
            record = param.get_help_record(ctx)
            if record:
                lines.append(_item(*record))
        lines.append("")
    return lines


def _panels(items, panel_of) -> dict[str, list]:
    """Items grouped by panel, panels in order of first appearance (as ``--help`` shows them)."""
    panels: dict[str, list] = {}
    for item in items:
        panels.setdefault(panel_of(item), []).append(item)
    return panels


def _item(name: str, help_text: str) -> str:
    return f"- `{name}`" + (f": {' '.join(help_text.split())}" if help_text else "")
