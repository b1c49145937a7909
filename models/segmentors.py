"""Semantic segmentors: backbone -> (neck) -> decode head, registered like the classifiers.

The composition is mmseg's ``EncoderDecoder`` at inference (no auxiliary head): the module returns
the decode head's logits at 1/``spec.output_stride`` of its input; resizing to the image, cropping
and argmax are the shared post-processing of ``tinyvim_deploy.tasks.segmentation``. Keys
are the official checkpoint's: ``backbone.*``, ``neck.*``, ``decode_head.*``.

| name | backbone | decoder | official |
|---|---|---|---|
| ``cgrseg-{t,b,l}`` | EfficientFormerV2 S1/S2/L | CGRSeg head T/B/L | yes (CGRSeg, ADE20K 160k) |
| ``cgrseg-{b,l}-ssa`` | EfficientFormerV2 S2/L | CGRSeg_ssa head | yes (SSA repo) |
| ``tinyvim-{b,l}-fpn`` | TinyViM-B/L dense | Semantic FPN | yes (TinyViM repo) |
| ``tinyvim-s-cgrseg[-ssa]`` | TinyViM-S dense | CGRSeg T-head [SSA] | our pairing (cgrseg.md §2.3) |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyvim_deploy.models.cgrseg import HEAD_CONFIGS, CGRSegHead, CGRSegHeadConfig
from tinyvim_deploy.models.registry import ModelSpec, register_model

ADE20K_SCALE = (2048, 512)  # mmseg's ADE20K test img_scale: short side 512, long side at most 2048


class Segmentor(nn.Module):
    """``EncoderDecoder`` at inference: image -> logits [B, K, H/s, W/s]."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, neck: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        if hasattr(self, "neck"):
            feats = self.neck(feats)
        return self.decode_head(feats)

    def prepare_for_size(self, height: int, width: int) -> None:
        """Before a fixed-size export: size-dependent constants (EfficientFormerV2's resized attention biases)."""
        precompute = getattr(self.backbone, "precompute_attention_biases", None)
        if precompute is not None:
            precompute(height, width)

    def drop_unused_keys(self, state_dict: dict) -> tuple[dict, list[str]]:
        """Official entries this inference model does not hold (SSA's training-only weights)."""
        if getattr(self.decode_head, "classifier", None) == "ssa":
            from tinyvim_deploy.models.ssa import drop_training_only

            return drop_training_only(state_dict, "decode_head.")
        return state_dict, []


class WithLabelOutput(nn.Module):
    """A segmentor whose graph ends in the label map: logits resized to the input size, argmax, int32.

    For apps that want labels straight from the runtime (``--include-postprocess``). The Predictor then
    crops and resizes *labels* (nearest) to the image, which can differ from resizing logits at
    class boundaries; without it the Predictor follows the official order (cgrseg.md §9).
    """

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor
        self.spec = getattr(segmentor, "spec", None)

    def forward(self, x: Tensor) -> Tensor:
        logits = F.interpolate(self.segmentor(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        return logits.argmax(1).to(torch.int32)


def _tinyvim_dense(name: str) -> nn.Module:
    from tinyvim_deploy.models.registry import get_constructor

    return get_constructor(name)(features_only=True)


def _spec(name: str, family: str, params: int, macs: int, resize_mode: str, output_stride: int, paper: str,
          size_multiple: int = 32) -> ModelSpec:
    return ModelSpec(name=name, family=family, task="segmentation", input_size=(3, 512, 512), crop_pct=1.0,
                     interpolation="bilinear", num_classes=150, labels="ade20k", params=params, macs=macs,
                     size_multiple=size_multiple, test_scale=ADE20K_SCALE, resize_mode=resize_mode,
                     output_stride=output_stride, paper=paper)


def _register(spec: ModelSpec, build: Callable[[int], nn.Module]) -> None:
    @register_model(spec)
    def constructor(num_classes: int = 150, **_) -> nn.Module:
        return build(num_classes)


_CGRSEG = "Ni et al., Context-Guided Spatial Feature Reconstruction for Efficient Semantic Segmentation, ECCV 2024"
_SSA = "Ma et al., Semantic and Spatial Adaptive Pixel-level Classifier for Semantic Segmentation, NeurIPS 2024"
_TINYVIM = "Ma et al., TinyViM: Frequency Decoupling for Tiny Hybrid Vision Mamba, ICCV 2025"

TINYVIM_S_WIDTHS = (64, 168, 224)  # TinyViM-S stages 1–3 (strides 8, 16, 32)


def _tinyvim_s_cgrseg(classifier: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        config = CGRSegHeadConfig(in_channels=TINYVIM_S_WIDTHS, num_classes=num_classes, **HEAD_CONFIGS["t"])
        return Segmentor(_tinyvim_dense("tinyvim-s"), CGRSegHead(config, classifier))

    return build


# CGRSeg keeps the official pad-to-32 pipeline; SSA's configs resize to the multiple instead (ssa.md §2.1).
_register(_spec("tinyvim-s-cgrseg", "tinyvim+cgrseg", 10_264_603, 5_718_289_408, "pad", 8,
                f"{_TINYVIM}; {_CGRSEG}"), _tinyvim_s_cgrseg("dpg"))
_register(_spec("tinyvim-s-cgrseg-ssa", "tinyvim+cgrseg+ssa", 10_317_466, 5_811_410_432, "stretch", 8,
                f"{_TINYVIM}; {_SSA}"), _tinyvim_s_cgrseg("ssa"))


def _tinyvim_fpn(backbone: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from tinyvim_deploy.models.semantic_fpn import FPNHead, FPNNeck

        trunk = _tinyvim_dense(backbone)
        return Segmentor(trunk, FPNHead(num_classes=num_classes), neck=FPNNeck(trunk.embed_dims))

    return build


# TinyViM's own segmentation configs: Semantic FPN, AlignResize (stretch to multiples of 32), stride-4 logits.
for _name, _params, _macs in (("tinyvim-b-fpn", 14_933_730, 29_149_028_352), ("tinyvim-l-fpn", 35_638_438, 46_234_009_600)):
    _register(_spec(_name, "tinyvim+fpn", _params, _macs, "stretch", 4, _TINYVIM), _tinyvim_fpn(_name[:9]))


def _cgrseg(variant: str, classifier: str) -> Callable[[int], nn.Module]:
    backbone = {"t": "s1", "b": "s2", "l": "l"}[variant]

    def build(num_classes: int) -> nn.Module:
        from tinyvim_deploy.models.efficientformerv2 import EfficientFormerV2

        trunk = EfficientFormerV2(backbone)
        config = CGRSegHeadConfig(in_channels=tuple(trunk.widths[1:]), num_classes=num_classes, **HEAD_CONFIGS[variant])
        return Segmentor(trunk, CGRSegHead(config, classifier))

    return build


# The official CGRSeg segmentors (pad to 32) and their SSA versions (ResizeToMultiple: stretch), ADE20K.
for _name, _params, _macs in (("cgrseg-t", 9_364_647, 4_527_215_616), ("cgrseg-b", 19_114_871, 8_589_358_080),
                              ("cgrseg-l", 35_677_703, 16_120_375_296)):
    _register(_spec(_name, "cgrseg", _params, _macs, "pad", 8, _CGRSEG), _cgrseg(_name[-1], "dpg"))
for _name, _params, _macs in (("cgrseg-b-ssa", 19_286_134, 8_795_195_392), ("cgrseg-l-ssa", 35_848_966, 16_326_212_608)):
    _register(_spec(_name, "cgrseg+ssa", _params, _macs, "stretch", 8, _SSA), _cgrseg(_name[-5], "ssa"))
