"""``tinyvim-micro``: TinyViM-S's code path (every block type, SelectiveScan and the Laplace ops) at toy widths.

Registered for a test's duration only (``registered_micro``), through the registry's public
``register_model``, so that ``tvdeploy models`` and checkpoint guessing elsewhere never see it.
Export mechanics and the INT8 accuracy test run on it in seconds; parity against the official
fixtures stays on tinyvim-s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tinyvim_deploy.models import registry
from tinyvim_deploy.models.registry import ModelSpec, register_model
from tinyvim_deploy.models.tinyvim import TinyViM

MICRO = "tinyvim-micro"
# One block per stage (two in stage 2, TinyViM's mid-stage TViMBlock rule), each stage ending in a TViMBlock.
DIMS, DEPTHS = (24, 32, 64, 96), (1, 1, 2, 1)


@contextlib.contextmanager
def registered_micro() -> Iterator[str]:
    """Register ``tinyvim-micro`` (1000 ImageNet classes by default, like tinyvim-s) until the block ends."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_MODELS", dict(registry._MODELS))  # the registry as it was comes back afterwards
        spec = ModelSpec(name=MICRO, family="tinyvim", task="classification", paper="test-only micro variant")

        @register_model(spec)
        def build(num_classes: int = 1000, features_only: bool = False, distillation: bool = True) -> TinyViM:
            return TinyViM(DIMS, DEPTHS, num_classes=num_classes, distillation=distillation,
                           features_only=features_only)

        yield MICRO
