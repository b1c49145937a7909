"""The tvdeploy command line: tables, versions, one-line errors with exit code 2, and how the CLI is built."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyvim_deploy as tv
from tests.conftest import REPO, tvdeploy

CLI_DIR = REPO / "tinyvim_deploy" / "cli"
COMMANDS = {"models", "info", "export", "validate", "check", "predict", "bench", "eval", "compare", "train", "distill"}


def test_version():
    r = tvdeploy("--version")
    assert r.returncode == 0 and tv.__version__ in r.stdout


def test_models_table():
    r = tvdeploy("models")
    assert r.returncode == 0
    for name, params in (("tinyvim-s", "5.91 M"), ("tinyvim-b", "11.51 M"), ("tinyvim-l", "32.38 M")):
        assert name in r.stdout and params in r.stdout
    assert "0.927" in r.stdout and "3x224x224" in r.stdout


def test_info_lists_runtimes(monkeypatch):
    from tinyvim_deploy import environment

    installed = environment.package_version  # TensorRT reads as absent, whatever this host has installed
    monkeypatch.setattr(environment, "package_version", lambda d: "not installed" if d == "tensorrt" else installed(d))
    r = tvdeploy("info")
    assert r.returncode == 0
    for key in ("torch", "onnxruntime", "coremltools", "tensorrt", "cpu", "gpu"):
        assert key in r.stdout
    assert "not installed" in r.stdout


def test_unknown_command_is_a_usage_error():
    assert tvdeploy("frobnicate").returncode == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("export", "--model", "tinyvim-xl"), "Unknown model"),
        (("export", "--model", "tinyvim-s", "--weights", "/nonexistent.pth"), "not found"),
        (("export", "--model", "tinyvim-s", "--input-size", "240"), "multiples of 32"),
        # a flag the chosen target would ignore is refused, not dropped
        (("export", "--target", "coreml", "--int8"), "--int8 does not apply to --target coreml"),
        (("export", "--target", "coreml", "--batch", "4"), "--batch does not apply to --target coreml"),
        (("export", "--target", "coreml", "--opset", "17"), "--opset does not apply"),
        (("export", "--target", "coreml", "--scan-impl", "unrolled"), "--scan-impl does not apply"),
        (("export", "--precision", "fp32"), "--precision does not apply to --target onnx"),
        (("export", "--nms", "none"), "--nms is for detectors"),
        (("export", "--holdout", "10"), "add --int8"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, needle):
    r = tvdeploy(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_importing_the_cli_registers_every_command():
    import typer

    from tinyvim_deploy.cli import app

    assert set(typer.main.get_command(app).commands) == COMMANDS


def test_no_cli_module_imports_the_root():
    """Commands import the leaf modules (console, datasets), never ``tinyvim_deploy.cli`` itself: no cycles."""
    offenders = []
    for path in sorted(CLI_DIR.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name == "tinyvim_deploy.cli"]
            elif isinstance(node, ast.ImportFrom):
                root = node.module == "tinyvim_deploy.cli" or (node.level == 1 and not node.module)
                if root or (node.module == "tinyvim_deploy" and any(a.name == "cli" for a in node.names)):
                    offenders.append(f"{path.name}: from {node.module or '.'} import ...")
    assert not offenders


def test_help_groups_commands_and_export_options_without_bool_types():
    r = tvdeploy("--help")
    assert r.returncode == 0 and "<bool>" not in r.stdout
    for panel in ("Export", "Run", "Evaluate", "Train", "Info"):
        assert panel in r.stdout
    r = tvdeploy("export", "--help")
    assert r.returncode == 0 and "<bool>" not in r.stdout
    for panel in ("General", "ONNX", "INT8", "TensorRT", "Core ML", "Detection"):
        assert f"─ {panel} ─" in r.stdout, panel
    assert "<onnx|trt|coreml>" in r.stdout


def test_cli_reference_is_current():
    import typer

    from tinyvim_deploy.cli import app
    from tinyvim_deploy.cli.docs import render_markdown

    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert render_markdown(typer.main.get_command(app)) == current, "docs/cli.md is stale: run python docs/gen_cli.py"


def _small_onnx_with_metadata(path: Path, **metadata: str) -> Path:
    """A one-node ONNX file carrying tinyvim-deploy metadata: enough for validate to read what it records."""
    import onnx
    from onnx import TensorProto, helper

    from tinyvim_deploy.export.metadata import write_metadata

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 32, 32])])
    proto = helper.make_model(graph)
    write_metadata(proto, {"model": "tinyvim-s", **metadata})
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize(
    ("recorded", "needle"),
    [
        ({"weights_sha256": "none (random init)"}, "exported with random weights"),
        ({"weights_sha256": "ab" * 32}, "pass it with --weights"),
        ({}, "pass --weights"),
    ],
)
def test_validate_without_weights_uses_the_metadata_or_says_which_to_pass(tmp_path, recorded, needle):
    r = tvdeploy("validate", _small_onnx_with_metadata(tmp_path / "m.onnx", **recorded))
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture
def grey_png(tmp_path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    return tmp_path / "grey.png"


def test_random_weights_are_noted_once(grey_png):
    r = tvdeploy("predict", "tinyvim-s", grey_png, "--topk", "1")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("note: no --weights given: tinyvim-s has random weights") == 1
    assert "grey.png" in r.stdout


def test_json_dash_is_stdout_alone(grey_png, tmp_path):
    r = tvdeploy("predict", "tinyvim-s", grey_png, "--topk", "1", "--json", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]  # stdout is the JSON alone: the table went to stderr
    assert results[0]["source"] == str(grey_png) and "grey.png" in r.stderr
    assert not (tmp_path / "-").exists()


def test_version_does_not_import_torch():
    code = ("import sys\nfrom tinyvim_deploy.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and tv.__version__ in r.stdout, r.stderr


def test_console_script_smoke():
    """The one real-process run: ``python -m tinyvim_deploy``, as the console script starts it."""
    for args, needle in ((["--version"], tv.__version__), (["models"], "tinyvim-s")):
        r = subprocess.run([sys.executable, "-m", "tinyvim_deploy", *args], capture_output=True, text=True,
                           timeout=300, env={"COLUMNS": "200", "PATH": "", "PYTHONWARNINGS": "ignore"})
        assert r.returncode == 0 and needle in r.stdout, r.stderr
