"""Reading checkpoint files safely and fitting them to a model with one-line errors.

Real files come in several layouts: a bare state_dict, ``{'model': ...}``, ``{'state_dict': ...}``,
``{'model_ema': ...}``, keys prefixed ``module.`` (DataParallel/DDP), and the official training
layout (``main.py``) that also pickles an ``argparse.Namespace``. Everything is read with
``torch.load(weights_only=True)``; the only extra class allowed is ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import zipfile
from functools import cache

import torch
from torch import Tensor, nn

from tinyvim_deploy.errors import CheckpointError, CheckpointNotFoundError
from tinyvim_deploy.fileio import file_sha256

# Container keys tried in order. 'model' wins over 'model_ema' (the official eval uses 'model').
CONTAINER_KEYS = ("model", "state_dict", "model_ema", "module")
_HEAD_KEYS = ("norm.", "head.", "dist_head.")
_DENSE_NORMS = ("norm0.", "norm2.", "norm4.", "norm6.")


@dataclasses.dataclass
class Checkpoint:
    state_dict: dict[str, Tensor]
    path: str
    sha256: str
    source: str  # which container key the weights came from ("<root>" for a bare state_dict)
    notes: list[str] = dataclasses.field(default_factory=list)  # what was done, for the user


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def load_checkpoint(path: str | os.PathLike, *, use_ema: bool = False) -> Checkpoint:
    """Read a checkpoint file and return its state_dict (container and ``module.`` prefix removed)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"Checkpoint file not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"Checkpoint path is a directory, not a file: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"Checkpoint file is empty: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unpickling failed"
        raise CheckpointError(
            f"{path} is not a plain PyTorch checkpoint (refusing to unpickle it safely: {first[:160]})"
        ) from None
    except Exception as e:  # torch raises many types for garbage (KeyError, RuntimeError, EOFError…)
        text = str(e).lower()
        reason = (
            "the file is truncated or corrupt"
            if isinstance(e, (EOFError, zipfile.BadZipFile))
            or any(w in text for w in ("central directory", "eof", "truncat", "corrupt", "failed finding", "zip"))
            else "it is not a PyTorch checkpoint"
        )
        raise CheckpointError(f"Cannot read checkpoint {path}: {reason}.") from None

    notes: list[str] = []
    if _is_state_dict(obj):
        state_dict, source = obj, "<root>"
    elif isinstance(obj, dict):
        keys = ("model_ema",) + CONTAINER_KEYS if use_ema else CONTAINER_KEYS
        source = next((k for k in keys if _is_state_dict(obj.get(k))), "")
        if not source:
            raise CheckpointError(
                f"{path} holds no model weights: expected a state_dict or one of the keys "
                f"{', '.join(CONTAINER_KEYS)}; found keys {', '.join(map(str, list(obj)[:8]))}."
            )
        state_dict = obj[source]
        if source == "model" and "model_ema" in obj:
            notes.append("using the 'model' weights; the file also has 'model_ema' (pass use_ema=True for those)")
    else:
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of tensors.")

    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
        notes.append("stripped the 'module.' prefix")
    return Checkpoint(dict(state_dict), path, file_sha256(path), source, notes)


@cache
def _variant_shapes(name: str) -> dict[str, tuple[int, ...]]:
    from tinyvim_deploy.models.registry import get_constructor

    with torch.device("meta"):
        model = get_constructor(name)(num_classes=1000)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(_HEAD_KEYS[1:])}


def fitting_variant(state_dict: dict[str, Tensor]) -> str | None:
    """The registered model whose trunk shapes this state_dict fits, if any."""
    from tinyvim_deploy.models.registry import list_models

    trunk = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(_HEAD_KEYS[1:])}
    for name in list_models():
        shapes = _variant_shapes(name)
        if trunk.keys() - {k for k in trunk if k.startswith(_DENSE_NORMS)} <= shapes.keys() and all(
            shapes[k] == s for k, s in trunk.items() if k in shapes
        ):
            if len(shapes.keys() - trunk.keys()) == 0:
                return name
    return None


def _listing(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"{len(keys)} ({shown}{', …' if len(keys) > n else ''})"


def load_weights(model: nn.Module, checkpoint: Checkpoint, model_name: str) -> None:
    """Load ``checkpoint`` into ``model`` strictly, or raise a one-line :class:`CheckpointError`.

    A classification checkpoint loaded into a dense backbone (``features_only``) follows the official
    det/seg loader: ``norm``/``head``/``dist_head`` are ignored and ``norm0/2/4/6`` keep their init.
    """
    state_dict = dict(checkpoint.state_dict)
    if hasattr(model, "drop_unused_keys"):  # e.g. SSA's teacher branch and loss buffer (training only)
        state_dict, dropped = model.drop_unused_keys(state_dict)
        if dropped:
            checkpoint.notes.append(f"dropped {len(dropped)} training-only entries ({', '.join(dropped)})")
    expected = model.state_dict()
    dense = any(k.startswith(_DENSE_NORMS) for k in expected)
    if dense:
        dropped = [k for k in state_dict if k.startswith(_HEAD_KEYS)]
        for k in dropped:
            del state_dict[k]
        if dropped:
            checkpoint.notes.append("ignored the classifier keys (norm, head, dist_head) for the dense backbone")
        absent = [k for k in expected if k.startswith(_DENSE_NORMS) and k not in state_dict]
        for k in absent:
            state_dict[k] = expected[k]
        if absent:
            checkpoint.notes.append("norm0/2/4/6 not in the checkpoint: they keep their init (official behaviour)")

    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        fits = fitting_variant(checkpoint.state_dict)
        where = f"Checkpoint {checkpoint.path} does not fit {model_name}"
        if fits and fits != model_name:
            raise CheckpointError(f"{where}: its shapes are those of {fits}; use --model {fits}.")
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (first: {k} is {tuple(state_dict[k].shape)} in the file, "
                f"{tuple(expected[k].shape)} in the model)"
            )
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        hint = "" if fits else "; its shapes fit no known variant"
        raise CheckpointError(f"{where}: {'; '.join(parts)}{hint}.")
    model.load_state_dict(state_dict, strict=True)
