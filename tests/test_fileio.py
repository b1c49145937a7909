"""Atomic outputs: nothing left behind on failure, modes that follow the umask, and ``-`` as standard output."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tinyvim_deploy import fileio
from tinyvim_deploy.fileio import atomic_output, current_umask, honour_umask, write_json


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    saved = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_output_gives_the_file_the_umask_mode_not_the_temporary_0600(tmp_path, umask, mask, expected):
    umask(mask)
    with atomic_output(tmp_path / "model.onnx") as tmp:
        assert mode(tmp) == 0o600  # mkstemp's: private while it is being written
        tmp.write_bytes(b"onnx")
    assert mode(tmp_path / "model.onnx") == expected
    write_json(tmp_path / "report.json", {"a": 1})
    assert mode(tmp_path / "report.json") == expected


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_a_staged_folder_gets_the_umask_modes_throughout(tmp_path, umask, mask, file_mode, dir_mode):
    """As a Core ML package is staged: coremltools writes some of its files 0600 and folders 0700."""
    umask(mask)
    package = Path(tempfile.mkdtemp(dir=tmp_path)) / "m.mlpackage"
    (package / "Data" / "weights").mkdir(parents=True)
    for file in (package / "Manifest.json", package / "Data" / "weights" / "weight.bin"):
        file.write_bytes(b"x")
        file.chmod(0o600)
    (package / "Data" / "weights").chmod(0o700)
    package.chmod(0o700)
    honour_umask(package)
    assert {mode(p) for p in [package, *package.rglob("*")] if p.is_dir()} == {dir_mode}
    assert {mode(p) for p in package.rglob("*") if p.is_file()} == {file_mode}


def test_the_umask_is_read_without_proc_as_well(monkeypatch, umask):
    umask(0o027)
    assert current_umask() == 0o027

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(fileio, "open", no_proc, raising=False)  # the module's open, not the builtin
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # and it is left as it was


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dash", ["-", Path("-")])
def test_write_json_to_dash_writes_standard_output_and_no_file(tmp_path, monkeypatch, capsys, dash):
    monkeypatch.chdir(tmp_path)
    write_json(dash, {"top1": np.float32(0.5), "path": Path("a/b"), "counts": np.arange(2)})
    assert json.loads(capsys.readouterr().out) == {"top1": 0.5, "path": "a/b", "counts": [0, 1]}
    assert list(tmp_path.iterdir()) == []
