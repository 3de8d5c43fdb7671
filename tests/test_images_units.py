"""runtime/images.py by hand: every refusal word for word, resize indices and weights, palettes, overlays.

No model: with tests/test_images.py (which compares the resizes with Pillow
and OpenCV), the unit tests the mutation run of images.py uses
(docs/HARDENING.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from unet_runtime import images as im
from unet_runtime.errors import InputImageError


def _refusal(*args, **kwargs) -> str:
    with pytest.raises(InputImageError) as info:
        im.validate_image(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------ validate_image
def test_the_pixel_limit_is_64_megapixels():
    assert im.DEFAULT_MAX_PIXELS == 64 * 1024 * 1024
    assert im.validate_image.__defaults__[-1] == im.DEFAULT_MAX_PIXELS


def test_refusals_word_for_word():
    assert _refusal([[1]]) == (
        "image is a list, not a numpy array; pass np.asarray(pil_image.convert('RGB'))"
    )
    assert _refusal(np.zeros((2, 2, 3), np.float32), 4) == (
        "image 4 has dtype float32; only uint8 RGB is allowed "
        "(scale floats to 0..255 and use .astype(np.uint8))"
    )
    assert _refusal(np.zeros((2, 2, 3), np.uint16)) == (
        "image has dtype uint16; only uint8 RGB is allowed "
        "(keep the top 8 bits: (image >> 8).astype(np.uint8))"
    )
    assert "(image >> 24)" in _refusal(np.zeros((2, 2, 3), np.uint32))
    assert _refusal(np.zeros((2, 2, 3), np.int16)) == (
        "image has dtype int16; only uint8 RGB is allowed (clip to 0..255 and use .astype(np.uint8))"
    )
    assert _refusal(np.zeros((2, 2, 3), bool)) == (
        "image has dtype bool; only uint8 RGB is allowed (a boolean mask is not an image; "
        "pass (mask * 255).astype(np.uint8) stacked to 3 channels)"
    )
    assert _refusal(np.zeros((2, 2, 3), np.complex64)) == (
        "image has dtype complex64; only uint8 RGB is allowed"
    )
    assert _refusal(np.zeros((4, 5), np.uint8), 0) == (
        "image 0 has shape (4, 5); only (H, W, 3) RGB is allowed; grayscale: stack it to 3 channels"
    )
    assert _refusal(np.zeros((4, 5, 4), np.uint8)) == (
        "image has shape (4, 5, 4); only (H, W, 3) RGB is allowed; "
        "RGBA: drop the alpha channel (image[..., :3])"
    )
    assert _refusal(np.zeros((3, 5, 6), np.uint8)) == (
        "image has shape (3, 5, 6); only (H, W, 3) RGB is allowed; "
        "it looks channels-first (C, H, W): pass image.transpose(1, 2, 0)"
    )
    assert _refusal(np.zeros((4, 5, 5), np.uint8)).endswith("; convert it to RGB")
    assert _refusal(np.zeros((4, 5, 2), np.uint8)).endswith("; convert it to RGB")
    assert _refusal(np.zeros((4, 5, 1), np.uint8)).endswith("; grayscale: stack it to 3 channels")
    assert _refusal(np.zeros((2, 3), np.uint8)).endswith("; grayscale: stack it to 3 channels")
    assert _refusal(np.zeros((1, 4, 5, 3), np.uint8)).endswith(
        "; a batch of images: pass them as a list of (H, W, 3) arrays (list(batch))"
    )
    assert _refusal(np.zeros((3, 4, 4), np.uint8)).endswith("pass image.transpose(1, 2, 0)")
    assert _refusal(np.zeros((0, 5, 3), np.uint8)) == (
        "image has shape (0, 5, 3): it is empty; H and W must be >= 1"
    )
    assert "it is empty" in _refusal(np.zeros((5, 0, 3), np.uint8))
    assert _refusal(np.zeros((10, 11, 3), np.uint8), 2, max_pixels=109) == (
        "image 2 has 10x11 = 110 pixels, more than the limit of 109; downscale it or raise max_pixels"
    )


def test_the_limit_itself_is_allowed_and_the_image_returned_as_is():
    image = np.zeros((10, 11, 3), np.uint8)
    assert im.validate_image(image, max_pixels=110) is image
    assert im.validate_image(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1, 3)


# ------------------------------------------------------------------------ resizes
def test_source_coordinates_are_half_pixel_and_clamped():
    lo, hi, frac = im._source_coords(4, 2)  # x = (i + 0.5) * 0.5 - 0.5 = -0.25, 0.25, 0.75, 1.25
    np.testing.assert_array_equal(lo, [0, 0, 0, 1])
    np.testing.assert_array_equal(hi, [1, 1, 1, 1])
    np.testing.assert_allclose(frac, [0.0, 0.25, 0.75, 0.0])
    lo, hi, frac = im._source_coords(2, 4)  # x = 0.5, 2.5
    np.testing.assert_array_equal(lo, [0, 2])
    np.testing.assert_array_equal(hi, [1, 3])
    np.testing.assert_allclose(frac, [0.5, 0.5])
    assert frac.dtype == np.float32


@pytest.mark.parametrize("backend", ["numpy", "opencv"])
def test_bilinear_by_hand(backend):
    im.set_resize_backend(backend)
    try:
        # weights of 1/4 and 3/4 on small integers: exact in float32 (measured equal, both backends)
        row = np.array([[0.0, 10.0]], np.float32)  # 1 x 2 -> 1 x 4
        np.testing.assert_array_equal(im.resize_bilinear(row, 1, 4), [[0.0, 2.5, 7.5, 10.0]])
        col = row.T.copy()  # 2 x 1 -> 4 x 1
        np.testing.assert_array_equal(im.resize_bilinear(col, 4, 1)[:, 0], [0.0, 2.5, 7.5, 10.0])
        # both axes, downscale: 4x4 -> 2x2 averages 2x2 blocks (half-pixel centres fall between them)
        grid = np.arange(16, dtype=np.float32).reshape(4, 4)
        np.testing.assert_array_equal(im.resize_bilinear(grid, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
        # either pass order: tall-to-wide and wide-to-tall; every other of 8 columns is not on the 4
        # columns' centres, by a quarter of a step (measured 0.25 apart); 3x that
        np.testing.assert_allclose(
            im.resize_bilinear(grid, 2, 8)[:, ::2], im.resize_bilinear(grid, 2, 4), atol=0.75
        )
        same = np.arange(6, dtype=np.uint8).reshape(2, 3)
        out = im.resize_bilinear(same, 2, 3)
        assert out.dtype == np.float32 and (out == same).all()
    finally:
        im.set_resize_backend("auto")


def test_the_numpy_resize_takes_either_pass_order_exactly():
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = im._resize_numpy(grid, 6, 2)  # height grows, width shrinks: columns first
    rows_first = im._lerp(im._lerp(grid, *im._source_coords(6, 3), 0), *im._source_coords(2, 4), 1)
    # separable: the order changes nothing (measured equal; float32 may round a last bit)
    np.testing.assert_allclose(a, rows_first, rtol=1e-6, atol=0)


def test_uint8_images_are_rounded_and_same_size_is_returned_as_is():
    im.set_resize_backend("numpy")
    try:
        image = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1 x 2 -> 1 x 4
        out = im.resize_image(image, 1, 4)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out[0, :, 0], [0, 64, 191, 255])  # 63.75, 191.25 rounded
        assert im.resize_image(image, 1, 2) is image
    finally:
        im.set_resize_backend("auto")


def test_nearest_indices_by_hand():
    a = np.arange(4)[:, None] * 10 + np.arange(5)[None, :]  # value = 10 * row + col
    # rows 4 -> 2: (i + 0.5) * 2 -> 1, 3; cols 5 -> 3: (j + 0.5) * 5 / 3 -> 0, 2, 4
    np.testing.assert_array_equal(im.resize_nearest(a, 2, 3), [[10, 12, 14], [30, 32, 34]])
    # rows 4 -> 8: (i + 0.5) / 2 -> 0 0 1 1 2 2 3 3
    np.testing.assert_array_equal(im.resize_nearest(a, 8, 5)[:, 0], [0, 0, 10, 10, 20, 20, 30, 30])
    # 2 -> 3: (i + 0.5) * 2 / 3 -> 0, 1, 1 (never past the last row)
    np.testing.assert_array_equal(
        im.resize_nearest(a[:2, :2], 3, 3), [[0, 1, 1], [10, 11, 11], [10, 11, 11]]
    )
    assert im.resize_nearest(a, 4, 5) is a


def test_backend_choice_and_its_refusals():
    try:
        im.set_resize_backend("numpy")
        assert im.resize_backend() == "numpy"
        im.set_resize_backend("auto")
        assert im._backend is None
        assert im.resize_backend() == ("opencv" if im._cv2() is not None else "numpy")
        with pytest.raises(ValueError) as info:
            im.set_resize_backend("pillow")
        assert str(info.value) == "resize backend 'pillow' is not one of 'auto', 'opencv', 'numpy'"
    finally:
        im.set_resize_backend("auto")


def test_opencv_refused_by_name_where_it_is_missing(monkeypatch):
    monkeypatch.setattr(im, "_cv2", lambda: None)
    with pytest.raises(ValueError) as info:
        im.set_resize_backend("opencv")
    assert str(info.value) == (
        "resize backend 'opencv' needs OpenCV: pip install opencv-python-headless (the 'opencv' extra)"
    )
    monkeypatch.setattr(im, "_backend", None)
    assert im.resize_backend() == "numpy"


def test_more_channels_than_opencv_takes_are_resized_in_numpy():
    im.set_resize_backend("auto")
    wide = np.random.default_rng(0).random((4, 4, im._CV_MAX_CHANNELS + 1), dtype=np.float32)
    assert im._CV_MAX_CHANNELS == 512
    out = im.resize_bilinear(wide, 2, 2)
    np.testing.assert_allclose(out, im._resize_numpy(wide, 2, 2))


# ------------------------------------------------------------------------ padding, input, output
def test_pad_to_multiple_by_hand():
    image = np.ones((5, 16, 3), np.uint8)
    out = im.pad_to_multiple(image, 8)
    assert out.shape == (8, 16, 3) and out[:5].all() and not out[5:].any()
    out = im.pad_to_multiple(np.ones((16, 17, 3), np.uint8), 16)
    assert out.shape == (16, 32, 3) and not out[:, 17:].any() and out[:, :17].all()
    assert im.pad_to_multiple(image[:, :8], 1) is not None
    same = np.ones((16, 32, 3), np.uint8)
    assert im.pad_to_multiple(same, 16) is same


def test_mixed_batches_refused_word_for_word():
    a, b = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)
    with pytest.raises(InputImageError) as info:
        im.to_model_input([a, b], (0, 0, 0), (1, 1, 1), "nhwc")
    assert str(info.value) == (
        "to_model_input needs same-size uint8 images; image 1 is uint8 (2, 3, 3), "
        "image 0 is uint8 (2, 2, 3)"
    )


def test_channels_last():
    batch = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # N C H W
    out = im.channels_last(batch, "nchw")
    assert out.shape == (2, 4, 5, 3) and out[1, 2, 3, 0] == batch[1, 0, 2, 3]
    assert im.channels_last(batch, "nhwc") is batch


def test_softmax_by_hand():
    p = im.softmax(np.log(np.array([[1.0, 3.0], [2.0, 2.0]], np.float32)))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    q = im.softmax(np.log(np.array([[1.0, 1.0], [3.0, 1.0]], np.float32)), axis=0)
    np.testing.assert_allclose(q, [[0.25, 0.5], [0.75, 0.5]], rtol=1e-6)
    big = im.softmax(np.array([1000.0, 1000.0], np.float32))  # stable: no overflow
    np.testing.assert_allclose(big, [0.5, 0.5])


def test_voc_palette_by_hand():
    p = im.voc_palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    assert [tuple(p[i]) for i in range(9)] == [
        (0, 0, 0),
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (0, 0, 128),
        (128, 0, 128),
        (0, 128, 128),
        (128, 128, 128),
        (64, 0, 0),
    ]
    assert tuple(p[20]) == (0, 64, 128) and tuple(p[255]) == (224, 224, 192)  # tvmonitor, void
    assert im.voc_palette(3).shape == (3, 3)


def test_overlay_by_hand():
    image = np.full((1, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 2]], np.uint8)
    out = im.overlay(image, mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # background as it is
    np.testing.assert_array_equal(out[0, 1], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
    np.testing.assert_array_equal(out[0, 2], [50, 114, 50])
    quarter = im.overlay(image, mask, alpha=0.25)
    np.testing.assert_array_equal(quarter[0, 1], [107, 75, 75])  # 75 + 32
