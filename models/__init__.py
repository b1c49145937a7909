"""Model definitions, the registry, and checkpoint loading."""

from tinyvim_deploy.models import detection as _detection  # noqa: F401  (registers the detectors)
from tinyvim_deploy.models import segmentors as _segmentors  # noqa: F401  (registers the segmentors)
from tinyvim_deploy.models import tinyvim as _tinyvim  # noqa: F401  (registers the TinyViM variants)
from tinyvim_deploy.models.checkpoint import load_checkpoint, load_weights
from tinyvim_deploy.models.factory import create_model
from tinyvim_deploy.models.registry import ModelSpec, get_spec, list_models, parse_input_size
from tinyvim_deploy.models.tinyvim import TinyViM, check_input_size, reparameterize

__all__ = [
    "ModelSpec",
    "TinyViM",
    "check_input_size",
    "create_model",
    "get_spec",
    "list_models",
    "load_checkpoint",
    "load_weights",
    "parse_input_size",
    "reparameterize",
]
