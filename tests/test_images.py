"""Pure-numpy pre/post-processing, including property-based checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet_runtime import images as im
from unet_runtime.errors import InputImageError


def test_resize_bilinear_matches_pillow():
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ours = im.resize_bilinear(img, 64, 96)
    # Pillow's bilinear filter widens its support when downscaling; upscaling
    # is plain bilinear with half-pixel centres, the same as ours.
    ref = np.asarray(Image.fromarray(img).resize((96, 64), Image.BILINEAR), np.float32)
    assert (
        np.abs(ours - ref).max() <= 1.0
    )  # measured 0.98: Pillow rounds to uint8, ours stays float


def _bilinear_by_definition(a, height, width):
    """Each output pixel blends its four source neighbours at once (the textbook form, no separable passes)."""
    y0, y1, fy = im._source_coords(height, a.shape[0])
    x0, x1, fx = im._source_coords(width, a.shape[1])
    a = a.astype(np.float64)
    fy, fx = fy[:, None, None].astype(np.float64), fx[None, :, None].astype(np.float64)
    return (1 - fy) * ((1 - fx) * a[y0][:, x0] + fx * a[y0][:, x1]) + fy * (
        (1 - fx) * a[y1][:, x0] + fx * a[y1][:, x1]
    )


@pytest.fixture(params=["numpy", "opencv"])
def backend(request):
    """Each resize test runs with both host resizes (OpenCV is in the test extra); 'auto' restored after."""
    im.set_resize_backend(request.param)
    yield request.param
    im.set_resize_backend("auto")


#: How far each backend's float32 bilinear resize may be from the textbook blend, relative to the data's range:
#: numpy computes in float32 (~1e-7); OpenCV's coordinates are fixed point (measured 4.7e-5 on [0, 1] data).
RESIZE_ATOL = {"numpy": 1e-6, "opencv": 1e-4}


@pytest.mark.parametrize(
    "src, dst",
    [
        ((37, 53), (64, 96)),
        ((64, 96), (37, 53)),
        ((20, 300), (300, 20)),
        ((1, 1), (5, 7)),
        ((9, 4), (9, 11)),
        ((512, 512), (480, 640)),
    ],
)
@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.float32, 21)])
def test_resize_bilinear_is_the_four_neighbour_blend(src, dst, dtype, channels, backend):
    # Both pass orders (rows first when that leaves the smaller intermediate, else columns first)
    # occur above.
    rng = np.random.default_rng(sum(src) + sum(dst))
    a = (
        rng.integers(0, 256, (*src, channels))
        if dtype == np.uint8
        else rng.random((*src, channels))
    ).astype(dtype)
    ours = im.resize_bilinear(a, *dst)
    assert im.resize_backend() == backend
    assert ours.dtype == np.float32 and ours.shape == (*dst, channels) and ours.flags.c_contiguous
    np.testing.assert_allclose(
        ours, _bilinear_by_definition(a, *dst), rtol=0, atol=RESIZE_ATOL[backend] * float(a.max())
    )


@pytest.mark.parametrize(
    "src, dst", [((1080, 1920), (512, 512)), ((480, 640), (64, 64)), ((33, 17), (96, 80))]
)
def test_resize_image_backends_agree_within_a_grey_level(src, dst):
    """uint8 images: OpenCV rounds in fixed point, numpy in float; the results may differ by one level, not more."""
    img = np.random.default_rng(3).integers(0, 256, (*src, 3), dtype=np.uint8)
    out = {}
    for name in ("numpy", "opencv"):
        im.set_resize_backend(name)
        out[name] = im.resize_image(img, *dst)
    im.set_resize_backend("auto")
    assert out["numpy"].dtype == out["opencv"].dtype == np.uint8 and out["numpy"].shape == (*dst, 3)
    assert np.abs(out["numpy"].astype(int) - out["opencv"]).max() <= 1
    with pytest.raises(ValueError, match="not one of"):
        im.set_resize_backend("pillow")


def test_normalization_and_layout():
    img = np.full((4, 6, 3), 255, np.uint8)
    x = im.to_model_input([img, img], mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0), layout="nchw")
    assert x.shape == (2, 3, 4, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 2.0, 0.5], rtol=1e-6)


def test_normalization_is_the_graphs_float32_formula_in_both_layouts():
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    # What export-unet puts in a uint8 model's graph: float32 constants, a Mul then an Add.
    scale = np.array([1.0 / (255.0 * s) for s in std], np.float32)
    shift = np.array([-m / s for m, s in zip(mean, std, strict=True)], np.float32)
    ref = np.stack(imgs).astype(np.float32) * scale + shift
    nhwc = im.to_model_input(imgs, mean, std, "nhwc")
    nchw = im.to_model_input(imgs, mean, std, "nchw")
    np.testing.assert_array_equal(nhwc, ref)
    np.testing.assert_array_equal(nchw, ref.transpose(0, 3, 1, 2))
    # ... which is (x/255 - mean)/std up to float32 rounding.
    np.testing.assert_allclose(nhwc, (np.stack(imgs) / 255.0 - mean) / std, rtol=1e-6, atol=1e-6)
    assert nchw.flags.c_contiguous and nhwc.flags.c_contiguous
    half = im.to_model_input(imgs, mean, std, "nhwc", dtype=np.float16)
    assert half.dtype == np.float16 and np.array_equal(half, ref.astype(np.float16))


def test_uint8_input_is_copied_only_when_it_must_be():
    rng = np.random.default_rng(6)
    a, b = (rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(2))
    one = im.to_model_input([a], (0, 0, 0), (1, 1, 1), "nhwc", dtype=np.uint8)
    # a view: the model reads the image as it is
    assert one.shape == (1, 4, 6, 3) and np.shares_memory(one, a)
    two = im.to_model_input([a, b], (0, 0, 0), (1, 1, 1), "nchw", dtype=np.uint8)
    assert two.shape == (2, 3, 4, 6) and two.flags.c_contiguous and not np.shares_memory(two, a)
    np.testing.assert_array_equal(two[1], b.transpose(2, 0, 1))
    strided = a[:, ::-1]  # not contiguous: copied into a fresh batch
    assert not np.shares_memory(
        im.to_model_input([strided], (0, 0, 0), (1, 1, 1), "nhwc", dtype=np.uint8), a
    )


def test_mixed_images_are_refused_by_name():
    a = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(InputImageError, match="image 1 is float32"):
        im.to_model_input([a, a.astype(np.float32)], (0, 0, 0), (1, 1, 1), "nhwc")
    with pytest.raises(InputImageError, match=r"image 1 is uint8 \(5, 6, 3\)"):
        im.to_model_input([a, np.zeros((5, 6, 3), np.uint8)], (0, 0, 0), (1, 1, 1), "nchw")


def test_voc_palette_known_colours():
    pal = im.voc_palette(21)
    assert (
        pal[0].tolist() == [0, 0, 0]
        and pal[1].tolist() == [128, 0, 0]
        and pal[15].tolist() == [192, 128, 128]
    )


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
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_]),
)
def test_validate_accepts_only_rgb_uint8(shape, dtype):
    arr = np.zeros(shape, dtype)
    ok = dtype == np.uint8 and len(shape) == 3 and shape[2] == 3 and shape[0] > 0 and shape[1] > 0
    if ok:
        assert im.validate_image(arr) is arr
    else:
        with pytest.raises(InputImageError):
            im.validate_image(arr)
