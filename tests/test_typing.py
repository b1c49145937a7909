"""mypy on the TensorRT code, against tensorrt-stubs (typings/): the only check it gets without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TYPED_MODULES = ["tinyvim_deploy.runtimes.tensorrt", "tinyvim_deploy.export.tensorrt_export",
                 "tinyvim_deploy.export.tensorrt_check"]

mypy_api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e '.[dev]')")


def package_layout(dest: Path) -> Path:
    """The installed package layout (tinyvim_deploy/{models,export,...}) as symlinks, for mypy to follow."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(dirs.items()):
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for file in (ROOT / folder).glob("*.py"):
            (target / file.name).symlink_to(file)
        for sub in (ROOT / folder).iterdir():  # sub-packages inside a folder (export/nms/, tinyvim_deploy/tasks/)
            if (sub / "__init__.py").is_file():
                (target / sub.name).symlink_to(sub, target_is_directory=True)
    return dest


def run_mypy(tmp_path: Path, *modules: str, extra: list[str] | None = None) -> tuple[str, int]:
    tree = package_layout(tmp_path / "src")
    args = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
            "--no-error-summary", *(extra or [])]
    for module in modules:
        args += ["-m", module]
    old = os.getcwd()
    os.environ["MYPYPATH"] = f"{tree}{os.pathsep}{ROOT / 'typings'}"
    try:
        os.chdir(tree)
        stdout, stderr, status = mypy_api.run(args)
    finally:
        os.chdir(old)
        del os.environ["MYPYPATH"]
    return stdout + stderr, status


@pytest.mark.slow
def test_tensorrt_code_type_checks(tmp_path):
    output, status = run_mypy(tmp_path, *TYPED_MODULES)
    assert status == 0, output


def test_stubs_catch_a_misused_tensorrt_call(tmp_path):
    """The check can fail: a wrong argument type against the stubs is an error."""
    bad = tmp_path / "src" / "bad_trt.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("import tensorrt as trt\n\n\ndef f(builder: trt.Builder) -> None:\n"
                   "    builder.create_network('strongly typed')\n")
    output, status = run_mypy(tmp_path, "bad_trt")
    assert status == 1 and "create_network" in output, output
