"""Shared test helpers: where ../shared is, and the fixture model loaded once per session."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TVD_SHARED", REPO.parent / "shared")).resolve()
TINYVIM_FIXTURES = SHARED / "fixtures" / "tinyvim"
TRAIN_LAYOUT = TINYVIM_FIXTURES / "tinyvim_s_seed7_train_layout.pth"
PHOTOS = SHARED / "data" / "photos"

torch.set_num_threads(2)


def need_shared(path: Path = TINYVIM_FIXTURES) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: set TVD_SHARED to the shared/ folder (CI always has it)")
    return path


def fixture_array(name: str) -> np.ndarray:
    return np.load(need_shared() / name)


@pytest.fixture(scope="session")
def seed7_state_dict() -> dict[str, torch.Tensor]:
    """The official seed-7 TinyViM-S state_dict (the 'model' entry of the training layout)."""
    import argparse

    need_shared()
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(TRAIN_LAYOUT, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="session")
def seed7_model():
    import tinyvim_deploy as tv

    need_shared()
    return tv.create_model("tinyvim-s", weights=TRAIN_LAYOUT)


def tvdeploy(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run the CLI in this process, as a user would from a shell: wide output, warnings silenced.

    Returns what a subprocess would (``returncode``, ``stdout``, ``stderr``) without paying for a new
    interpreter and a torch import per call; tests/test_cli.py keeps one real subprocess smoke test.
    """
    from tinyvim_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Wide plain tables, as a pipe gets them: no colour forced by the CI's environment.
    env = {"COLUMNS": "200", "TVD_SHARED": str(SHARED), "FORCE_COLOR": None, "TTY_COMPATIBLE": None}
    saved_env = {key: os.environ.get(key) for key in env}
    saved_cwd, saved_threads = os.getcwd(), torch.get_num_threads()
    _set_env(env)
    returncode = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main([str(a) for a in args])
            except SystemExit as e:  # as the interpreter would turn it into an exit status
                if isinstance(e.code, int) or e.code is None:
                    returncode = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    returncode = 1
            except Exception:  # a crash: a traceback and status 1, as from a real process
                traceback.print_exc()
                returncode = 1
    finally:
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)  # --threads must not leak into the next test
        _set_env(saved_env)
    return subprocess.CompletedProcess(["tvdeploy", *map(str, args)], returncode, out.getvalue(), err.getvalue())


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def seed7_onnx(tmp_path_factory) -> Path:
    """TinyViM-S with the seed-7 weights, exported once per test session (validated by the export)."""
    from tinyvim_deploy.export.onnx_export import export_onnx

    need_shared()
    out = tmp_path_factory.mktemp("onnx") / "tinyvim-s.onnx"
    return export_onnx("tinyvim-s", weights=TRAIN_LAYOUT, output=out, photos_dir=None).path
