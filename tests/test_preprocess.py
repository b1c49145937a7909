"""Preprocessing equals the official evaluation transform (spec §9), written out here step by step in PIL."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import tinyvim_deploy as tv
from tests.conftest import PHOTOS, need_shared
from tinyvim_deploy.images import load_image
from tinyvim_deploy.preprocess import preprocess

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def official_eval_transform(path, size: int = 224) -> np.ndarray:
    """PIL loader → Resize(int(256/224·S), bicubic) → CenterCrop(S) → ToTensor → Normalize."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    short = int(256 / 224 * size)
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return ((np.asarray(image, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def photos_pil_reads():
    if not PHOTOS.exists():
        return []
    out = []
    for p in sorted(PHOTOS.iterdir()):
        try:
            Image.open(p).verify()
            out.append(p)
        except UnidentifiedImageError:  # multipage_rgb.tif is float64: PIL cannot read it at all
            pass
    return out


@pytest.mark.parametrize("photo", photos_pil_reads(), ids=lambda p: p.name)
def test_matches_the_official_eval_transform_on_real_photos(photo):
    spec = tv.get_spec("tinyvim-s")
    ours = preprocess([load_image(photo)], spec.input_size[1:], crop_pct=spec.crop_pct,
                      interpolation=spec.interpolation, mean=spec.mean, std=spec.std)[0]
    assert np.abs(ours - official_eval_transform(photo)).max() <= 1e-6


def test_real_photos_present():
    assert len(photos_pil_reads()) >= 7 or need_shared(PHOTOS) is None


def test_spec_holds_the_official_values():
    spec = tv.get_spec("tinyvim-s")
    assert (spec.crop_pct, spec.interpolation) == (0.875, "bicubic")
    assert np.allclose(spec.mean, MEAN) and np.allclose(spec.std, STD)


def test_non_square_input_crops_the_centre():
    rgb = np.zeros((300, 600, 3), np.uint8)
    rgb[:, 250:350] = 255  # a centred white stripe, 100 of 600 px
    x = preprocess([rgb], (224, 224))
    columns = np.flatnonzero((x[0, 0] > 0).all(axis=0))  # fully white columns
    assert x.shape == (1, 3, 224, 224)
    assert 83 <= len(columns) <= 86  # 100 px · 256/300 ≈ 85 px after the resize, all inside the crop
    assert abs(columns.mean() - 111.5) <= 1  # and centred
