"""The tvdeploy command line: tables, versions, and one-line errors with exit code 2."""

from __future__ import annotations

import pytest

import tinyvim_deploy as tv
from tests.conftest import tvdeploy


def test_version():
    r = tvdeploy("--version")
    assert r.returncode == 0 and tv.__version__ in r.stdout


def test_models_table():
    r = tvdeploy("models")
    assert r.returncode == 0
    for name, params in (("tinyvim-s", "5.91 M"), ("tinyvim-b", "11.51 M"), ("tinyvim-l", "32.38 M")):
        assert name in r.stdout and params in r.stdout
    assert "0.927" in r.stdout and "3x224x224" in r.stdout


def test_info_lists_runtimes():
    r = tvdeploy("info")
    assert r.returncode == 0
    for key in ("torch", "onnxruntime", "coremltools", "tensorrt", "cpu", "gpu"):
        assert key in r.stdout
    assert "not installed" in r.stdout  # tensorrt is never installed here


def test_unknown_command_is_a_usage_error():
    assert tvdeploy("frobnicate").returncode == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("export", "--model", "tinyvim-xl"), "Unknown model"),
        (("export", "--model", "tinyvim-s", "--weights", "/nonexistent.pth"), "not found"),
        (("export", "--model", "tinyvim-s", "--input-size", "240"), "multiples of 32"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needle):
    r = tvdeploy(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
