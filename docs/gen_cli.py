"""Regenerate docs/cli.md, the CLI reference, from the app: ``python docs/gen_cli.py`` (``--check``: exit 1 if stale)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tinyvim_deploy.cli import app
from tinyvim_deploy.cli.docs import render_markdown

CLI_MD = Path(__file__).resolve().parent / "cli.md"


def main(argv: list[str]) -> int:
    text = render_markdown(typer.main.get_command(app))
    if "--check" in argv:
        current = CLI_MD.read_text(encoding="utf-8") if CLI_MD.is_file() else ""
        if current != text:
            print(f"{CLI_MD} is stale: run python docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    CLI_MD.write_text(text, encoding="utf-8")
    print(f"wrote {CLI_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
