"""Model registry and the per-model spec: the one place that says what a model expects.

Export writes these fields into the artifact's metadata, runtimes and the Predictor read them back;
nothing else in the toolkit hard-codes an input size, a mean/std or a class list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import lru_cache
from importlib import resources

from torch import nn

from tinyvim_deploy.errors import InputSizeError, UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k names in class-index order (first lemma of each synset)."""
    text = resources.files("tinyvim_deploy").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(lemmas.split(",")[0].strip() for _, lemmas in rows)


@lru_cache(maxsize=1)
def ade20k() -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """ADE20K's 150 class names (stripped) and RGB palette, in label order (mmseg's ADE20KDataset)."""
    import json

    data = json.loads(resources.files("tinyvim_deploy").joinpath("data/ade20k.json").read_text("utf-8"))
    return tuple(n.strip() for n in data["classes"]), tuple(tuple(c) for c in data["palette_rgb"])


# The synthetic ShapesDet set (training/shapesdet.py), the only data the detectors are trained on.
SHAPESDET_CLASSES = ("disk", "ring", "square", "triangle", "cross", "diamond")

# Every shipped label set, by the name a ModelSpec's ``labels`` gives; each loads its names on first use.
LABEL_SETS: dict[str, Callable[[], tuple[str, ...]]] = {
    "imagenet": imagenet_class_names,
    "ade20k": lambda: ade20k()[0],
    "shapesdet": lambda: SHAPESDET_CLASSES,
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model is and how its input must be prepared (official evaluation, spec §9)."""

    name: str
    family: str
    task: str  # "classification" | "segmentation" | "detection"
    input_size: tuple[int, int, int] = (3, 224, 224)  # C, H, W
    crop_pct: float = 0.875  # official eval: resize short side to 256, centre-crop 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    labels: str = "imagenet"  # name of the shipped label set, or "" for index labels
    params: int = 0  # as built, both heads (official count)
    macs: int = 0  # conv + linear + einsum MACs at input_size, unfused (scan not counted)
    size_multiple: int = 32  # height and width must be multiples of this
    paper: str = ""
    # Segmentation (mmseg test pipeline, spec cgrseg.md §9 / efficientformerv2.md §13.2):
    test_scale: tuple[int, int] | None = None  # keep-ratio resize into (long, short), e.g. (2048, 512)
    resize_mode: str = "pad"  # "pad": pad bottom/right to size_multiple; "stretch": resize again to it
    output_stride: int = 1  # the network's logits are at 1/output_stride of its input

    @property
    def class_names(self) -> tuple[str, ...]:
        names = LABEL_SETS.get(self.labels)
        if names is not None and len(names()) == self.num_classes:
            return names()
        return tuple(str(i) for i in range(self.num_classes))

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        """One RGB colour per class (ADE20K's for its label set, else a fixed pseudo-random one)."""
        if self.labels == "ade20k" and self.num_classes == 150:
            return ade20k()[1]
        import numpy as np

        rng = np.random.default_rng(0)
        return tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(self.num_classes))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_MODELS: dict[str, tuple[ModelSpec, Callable[..., nn.Module]]] = {}


def register_model(spec: ModelSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a constructor ``fn(num_classes=..., features_only=...) -> nn.Module`` under ``spec.name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[spec.name] = (spec, fn)
        return fn

    return decorator


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def _entry(name: str) -> tuple[ModelSpec, Callable[..., nn.Module]]:
    key = name.strip().lower().replace("_", "-")
    if key not in _MODELS:
        raise UnknownModelError(f"Unknown model {name!r}; available: {', '.join(list_models())}.")
    return _MODELS[key]


def get_spec(name: str) -> ModelSpec:
    return _entry(name)[0]


def get_constructor(name: str) -> Callable[..., nn.Module]:
    return _entry(name)[1]


def parse_input_size(value: str | int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if value is None:
        return default
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple):
        return value
    text = str(value).lower().replace("×", "x")
    try:
        parts = [int(p) for p in text.split("x")]
    except ValueError:
        raise InputSizeError(f"Cannot read input size {value!r}: use N or HxW, e.g. 224 or 256x320.") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise InputSizeError(f"Cannot read input size {value!r}: use N or HxW, e.g. 224 or 256x320.")
