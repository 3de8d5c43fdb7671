"""Pure-numpy pre/post-processing, including property-based checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_runtime import images as im


def test_resize_bilinear_matches_pillow():
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ours = im.resize_bilinear(img, 64, 96)
    # Pillow's bilinear filter widens its support when downscaling; upscaling
    # is plain bilinear with half-pixel centres, the same as ours.
    ref = np.asarray(Image.fromarray(img).resize((96, 64), Image.BILINEAR), np.float32)
    assert np.abs(ours - ref).max() <= 1.0


def test_normalization_and_layout():
    img = np.full((4, 6, 3), 255, np.uint8)
    x = im.to_model_input([img, img], mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0), layout="nchw")
    assert x.shape == (2, 3, 4, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 2.0, 0.5], rtol=1e-6)


def test_voc_palette_known_colours():
    pal = im.voc_palette(21)
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128]


def test_softmax_is_stable():
    p = im.softmax(np.array([[1000.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), oh=st.integers(1, 50), ow=st.integers(1, 50))
def test_resize_and_pad_shapes(h, w, oh, ow):
    mask = np.random.default_rng(h * w).integers(0, 21, (h, w), dtype=np.uint8)
    out = im.resize_nearest(mask, oh, ow)
    assert out.shape == (oh, ow) and set(np.unique(out)) <= set(np.unique(mask))
    padded = im.pad_to_multiple(np.zeros((h, w, 3), np.uint8), 16)
    assert padded.shape[0] % 16 == 0 and padded.shape[1] % 16 == 0 and padded.shape[0] - h < 16
    assert im.resize_bilinear(np.zeros((h, w, 3), np.uint8), oh, ow).shape == (oh, ow, 3)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
       dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_]))
def test_validate_accepts_only_rgb_uint8(shape, dtype):
    arr = np.zeros(shape, dtype)
    ok = dtype == np.uint8 and len(shape) == 3 and shape[2] == 3 and shape[0] > 0 and shape[1] > 0
    if ok:
        assert im.validate_image(arr) is arr
    else:
        with pytest.raises(im.InputImageError):
            im.validate_image(arr)
