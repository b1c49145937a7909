"""Real-world image files: odd kinds decode to HxWx3 uint8 RGB; bad files are typed errors naming the file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from tinyvim_deploy.errors import ImageError
from tinyvim_deploy.images import collect_images, load_image, to_rgb


def gradient(h=48, w=64) -> np.ndarray:
    """A smooth RGB image with no symmetry, so a wrong rotation or channel order shows."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 60)], -1).astype(np.uint8)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = gradient()[:, :, 0]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (*gray.shape, 3) and rgb.dtype == np.uint8
    assert all((rgb[:, :, c] == gray).all() for c in range(3))


def test_rgba_drops_alpha(tmp_path):
    rgb = gradient()
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), "RGBA").save(tmp_path / "a.png")
    assert (load_image(tmp_path / "a.png") == rgb).all()


def test_16bit_is_scaled_to_8bit(tmp_path):
    rgb = gradient()
    cv2.imwrite(str(tmp_path / "d.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    out = load_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and (out == rgb).all()


def test_exif_orientation_is_honoured(tmp_path):
    rgb = gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rgb).save(tmp_path / "e.jpg", quality=98, exif=exif)
    out = load_image(tmp_path / "e.jpg")
    expected = np.rot90(rgb, k=-1)
    assert out.shape == expected.shape == (64, 48, 3)
    assert np.abs(out.astype(int) - expected).mean() < 2  # JPEG loss only


def test_multipage_tiff_gives_first_page(tmp_path):
    red, blue = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.uint8)
    red[..., 2], blue[..., 0] = 200, 200  # BGR order for OpenCV
    assert cv2.imwritemulti(str(tmp_path / "m.tif"), [red, blue])
    out = load_image(tmp_path / "m.tif")
    assert out.shape == (20, 30, 3) and (out[..., 0] == 200).all() and (out[..., 2] == 0).all()


def test_planar_float64_tiff_is_read_exactly_and_the_same_every_time(tmp_path):
    """The layout of scikit-image's multipage_rgb.tif, which OpenCV 5.0 decodes wrongly (and differently each time)."""
    import tifffile

    rng = np.random.default_rng(0)
    pages = rng.random((2, 3, 10, 10))  # two pages, channels first, float64 in [0, 1)
    with tifffile.TiffWriter(tmp_path / "p.tif") as tif:
        for page in pages:
            tif.write(page, photometric="rgb", planarconfig="separate")
    expected = (np.moveaxis(pages[0], 0, -1) * 255 + 0.5).astype(np.uint8)
    for _ in range(20):
        assert np.array_equal(load_image(tmp_path / "p.tif"), expected)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 12), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(tmp_path / "a.gif")
    assert out.shape == (12, 16, 3)
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("missing.png", None, "not found"),
        ("empty.jpg", b"", "empty"),
        ("text.png", b"this is not an image", "Cannot decode"),
        ("truncated.png", "truncate", "Cannot decode"),
    ],
)
def test_bad_files_raise_image_error_naming_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    if content == "truncate":
        cv2.imwrite(str(path), gradient(200, 200))
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=needle) as e:
        load_image(path)
    assert name in str(e.value)


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_arrays_rgb_and_bgr_and_bad_shapes():
    rgb = gradient()
    assert (to_rgb(rgb, "rgb") == rgb).all()
    assert (to_rgb(rgb[:, :, ::-1].copy(), "bgr") == rgb).all()
    with pytest.raises(ImageError, match="color order"):
        to_rgb(rgb, "hsv")
    with pytest.raises(ImageError, match="channels"):
        to_rgb(np.zeros((4, 4, 2), np.uint8), "rgb")
    with pytest.raises(ImageError, match="HxW"):
        to_rgb(np.zeros((2, 4, 4, 3), np.uint8), "rgb")


def test_collect_images_expands_folders_in_order(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    assert collect_images([tmp_path, explicit]) == [tmp_path / "a.jpg", tmp_path / "b.png", explicit]
