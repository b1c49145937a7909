"""Shared test helpers: where ../shared is, and the fixture model loaded once per session."""

from __future__ import annotations

import os
import subprocess
import sys
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


def tvdeploy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would (wide output, no warnings)."""
    code = "from tinyvim_deploy.cli import main; main()"
    env = {"COLUMNS": "200", "PATH": "", "PYTHONWARNINGS": "ignore", "TVD_SHARED": str(SHARED)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


@pytest.fixture(scope="session")
def seed7_onnx(tmp_path_factory) -> Path:
    """TinyViM-S with the seed-7 weights, exported once per test session (validated by the export)."""
    from tinyvim_deploy.export.onnx_export import export_onnx

    need_shared()
    out = tmp_path_factory.mktemp("onnx") / "tinyvim-s.onnx"
    return export_onnx("tinyvim-s", weights=TRAIN_LAYOUT, output=out, photos_dir=None).path
