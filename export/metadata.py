"""What an exported artifact says about itself (ONNX ``metadata_props``).

Written at export, read by the Predictor and ``tvdeploy validate``: with these keys an ONNX file
can be run with no other information. Values are strings; lists are JSON.
"""

from __future__ import annotations

import hashlib
import json

import onnx

from tinyvim_deploy.errors import ArtifactError
from tinyvim_deploy.models.registry import ModelSpec
from tinyvim_deploy.tasks import get_task

PREFIX = "tinyvim_deploy."


def build_metadata(spec: ModelSpec, *, input_hw: tuple[int, int], batch: int | None, opset: int, scan_impl: str,
                   custom_ops: str, weights_sha256: str, torch_version: str, toolkit_version: str) -> dict[str, str]:
    names = list(spec.class_names)
    return {
        "model": spec.name,
        "task": spec.task,
        "input_name": "image",
        "input_layout": "NCHW",
        "input_size": json.dumps([3, *input_hw]),
        "batch": "dynamic" if batch is None else str(batch),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "interpolation": spec.interpolation,
        "crop_pct": repr(spec.crop_pct),
        "num_classes": str(spec.num_classes),
        "class_names": json.dumps(names),
        "class_names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
        "weights_sha256": weights_sha256,
        "opset": str(opset),
        "scan_impl": scan_impl,
        "custom_ops": custom_ops,
        "torch_version": torch_version,
        "toolkit_version": toolkit_version,
        **get_task(spec.task).metadata_fields(spec),  # e.g. a segmentor's test pipeline and palette
    }


def load_onnx_file(path) -> onnx.ModelProto:
    """Read an ONNX file (graph only), or raise a one-line :class:`ArtifactError`."""
    from pathlib import Path

    if not Path(path).is_file():
        raise ArtifactError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception:
        raise ArtifactError(f"{path} is not a readable ONNX file.") from None


def write_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key in sorted(metadata):
        entry = model.metadata_props.add()
        entry.key, entry.value = PREFIX + key, metadata[key]


def read_metadata(model: onnx.ModelProto | str) -> dict[str, str]:
    if isinstance(model, str):
        model = onnx.load(model, load_external_data=False)
    return {p.key[len(PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def spec_from_metadata(metadata: dict[str, str], source: str = "artifact") -> tuple[ModelSpec, tuple[int, int]]:
    """The ModelSpec and (H, W) recorded in an artifact."""
    required = ("model", "task", "input_size", "mean", "std", "interpolation", "crop_pct", "num_classes")
    missing = [k for k in required if k not in metadata]
    if missing:
        raise ArtifactError(f"{source} has no tinyvim-deploy metadata ({', '.join(missing)} missing); "
                            "export it with tvdeploy export or pass --model.")
    _, h, w = json.loads(metadata["input_size"])
    spec = ModelSpec(
        name=metadata["model"], family="tinyvim", task=metadata["task"], input_size=(3, h, w),
        crop_pct=float(metadata["crop_pct"]), interpolation=metadata["interpolation"],
        mean=tuple(json.loads(metadata["mean"])), std=tuple(json.loads(metadata["std"])),
        num_classes=int(metadata["num_classes"]), labels="",
        test_scale=tuple(json.loads(metadata["test_scale"])) if metadata.get("test_scale", "null") != "null" else None,
        resize_mode=metadata.get("resize_mode", "pad"), size_multiple=int(metadata.get("size_multiple", 32)),
        output_stride=int(metadata.get("output_stride", 1)),
    )
    return spec, (h, w)


def palette_from_metadata(metadata: dict[str, str]) -> list[tuple[int, int, int]] | None:
    return [tuple(c) for c in json.loads(metadata["palette"])] if "palette" in metadata else None


def class_names_from_metadata(metadata: dict[str, str]) -> list[str]:
    if "class_names" in metadata:
        return json.loads(metadata["class_names"])
    return [str(i) for i in range(int(metadata.get("num_classes", 0)))]
