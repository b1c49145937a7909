"""What every command shares: the rich consoles, the progress bar, end-of-run notes, default paths.

A leaf module: it imports nothing from the commands or from the root (``tinyvim_deploy.cli``), so any
command can use it without an import cycle.

The consoles pick their stream when they print, not when this module is imported, so output goes to
whatever ``sys.stdout``/``sys.stderr`` are at that moment (pytest's capture, the in-process test helper).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import rich.markup
from rich.console import Console


class _Invocation:
    """Per-run state, reset by :func:`begin_invocation` at the start of every ``main()``."""

    def __init__(self) -> None:
        self.stdout_is_data = False  # `--json -`: stdout carries JSON only; tables go to stderr
        self.notes: list[str] = []


_invocation = _Invocation()


class _StreamConsole:
    """A rich Console bound to the current ``sys.stdout`` (or ``sys.stderr``) each time it is used."""

    def __init__(self, stderr: bool):
        self._stderr = stderr
        self._bound: tuple[object, Console] | None = None

    def get(self) -> Console:
        """The Console for the stream in use now (rebuilt when the stream changed)."""
        stream = sys.stderr if self._stderr or _invocation.stdout_is_data else sys.stdout
        if self._bound is None or self._bound[0] is not stream:
            # Piped output (CI logs, `| tee`, tests) gets wide tables instead of rich's 80-column default.
            self._bound = (stream, Console(file=stream, width=None if stream.isatty() else 200))
        return self._bound[1]

    def __getattr__(self, name: str):
        return getattr(self.get(), name)


console = _StreamConsole(stderr=False)
err_console = _StreamConsole(stderr=True)


def begin_invocation() -> None:
    """Forget the previous run's notes and ``--json -`` (several runs share one process in tests)."""
    global _invocation
    _invocation = _Invocation()


def json_destination(path: Path | None) -> Path | str | None:
    """``--json PATH``; ``--json -`` means stdout, so from here on tables and messages go to stderr."""
    if path is not None and str(path) == "-":
        _invocation.stdout_is_data = True
        return "-"
    return path


def note(text: str) -> None:
    """A note printed once on stderr when the command ends (dropped when it ends with a one-line error)."""
    if text not in _invocation.notes:
        _invocation.notes.append(text)


def note_random_weights(model: str) -> None:
    note(f"no --weights given: {model} has random weights, so its outputs mean nothing (pass --weights CKPT).")


def print_notes() -> None:
    for text in _invocation.notes:
        err_console.print(f"[yellow]note:[/] {rich.markup.escape(text)}", highlight=False, soft_wrap=True)
    _invocation.notes.clear()


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {rich.markup.escape(message)}", highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar():
    """A transient rich progress bar on stderr; yields ``for_run(label, verb)`` -> a per-run update callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console.get(), transient=True) as bar:

        def for_run(label: str, verb: str = "timing"):
            task = bar.add_task(f"{verb} {label}", total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)

        yield for_run


def default_photos_dir() -> Path | None:
    """../shared/data/photos (or $TVD_SHARED/data/photos) when present: real images for validation."""
    root = os.environ.get("TVD_SHARED")
    # Beside the working directory, or beside the source checkout (tinyvim_deploy/cli/ is three levels down).
    candidates = [Path(root)] if root else [Path.cwd().parent / "shared", Path(__file__).resolve().parents[3] / "shared"]
    for base in candidates:
        if (base / "data" / "photos").is_dir():
            return base / "data" / "photos"
    return None
