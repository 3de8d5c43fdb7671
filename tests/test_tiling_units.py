"""runtime/tiling.py without a model: window placement, weights, stitching, bands, argument checks.

The model is replaced by functions of the window's pixels, so what the
stitched image must be is known exactly: a per-pixel function gives the
same value in every window that covers a pixel, and any blend of equal
values is that value. These are the unit tests the mutation run of
tiling.py uses (docs/HARDENING.md); tests/test_tiling.py runs real models.
"""

from __future__ import annotations

import numpy as np
import pytest

from unet_runtime.errors import InputImageError
from unet_runtime.tiling import (
    GRID,
    SIGMA_SCALE,
    Band,
    TileSpec,
    Tiling,
    _depth,
    _gaussian,
    check_spec,
    tile_bands,
    window_starts,
)

CLASSES = 4


def _pointwise_probs(window: np.ndarray) -> np.ndarray:
    """A 'model' whose probabilities at a pixel depend on that pixel only."""
    onehot = np.eye(CLASSES, dtype=np.float32)[window[..., 0] % CLASSES]
    return 0.6 * onehot + 0.1  # rows sum to 1, the pixel's class clearly first


def _run_probs(windows):
    return [_pointwise_probs(w) for w in windows]


def _run_masks(windows):
    return [(w[..., 0] % CLASSES).astype(np.uint8) for w in windows]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _stitch(image, spec, run, *, scores=True, want_probs=True, **kw):
    bands = list(
        tile_bands(
            image, spec, run, num_classes=CLASSES, scores=scores, want_probs=want_probs, **kw
        )
    )
    mask = np.concatenate([b.mask for b in bands])
    probs = np.concatenate([b.probs for b in bands]) if want_probs and scores else None
    return bands, mask, probs


# ------------------------------------------------------------------------ placement
def test_window_starts_by_hand():
    assert window_starts(100, 64, 48) == [0, 48]  # 100 pads to 112: last start 112 - 64
    assert window_starts(64, 64, 48) == [0]
    assert window_starts(65, 64, 48) == [0, 16]  # 65 pads to 80
    assert window_starts(10, 64, 16) == [0]  # smaller than one window
    assert window_starts(256, 64, 64) == [0, 64, 128, 192]
    assert window_starts(257, 64, 64) == [0, 64, 128, 192, 208]


def test_stride_is_on_the_grid_and_at_least_one_cell():
    assert TileSpec(64, 64, overlap=0.25).stride(64) == 48
    assert TileSpec(64, 64, overlap=0.0).stride(64) == 64
    assert TileSpec(64, 64, overlap=0.5).stride(64) == 32
    assert TileSpec(64, 64, overlap=0.9).stride(64) == GRID  # 6.4 would be off the grid
    assert TileSpec(96, 96, overlap=0.3).stride(96) == 64  # 67.2 -> down to the grid


def test_gaussian_weights():
    g = _gaussian(32, 16)
    assert g.shape == (32, 16) and g.dtype == np.float32
    assert g.max() == 1.0 and g.min() >= 1e-3
    np.testing.assert_allclose(g, g[::-1, ::-1])  # symmetric
    # one sigma (n / 8) from the centre along a side: exp(-1/2) of the peak
    big = _gaussian(801, 801)
    assert big[400, 400] == 1.0
    sigma = SIGMA_SCALE * 801
    assert big[400, 500] == pytest.approx(np.exp(-0.5 * (100 / sigma) ** 2), rel=1e-6)
    assert big[400, 500] == pytest.approx(np.exp(-0.5), rel=2e-3)
    assert _gaussian(800, 800).min() == pytest.approx(1e-3)  # clipped, never zero


def test_depth_counts_only_borders_inside_the_image():
    d = _depth(4, 5, top=True, bottom=False, left=False, right=True)
    # rows: no top border (the image's edge), bottom at distance 3, 2, 1, 0
    # columns: left border at distance 0..4, no right border
    np.testing.assert_array_equal(d[:, 0], [0, 0, 0, 0])
    np.testing.assert_array_equal(d[0], [0, 1, 2, 3, 3])
    np.testing.assert_array_equal(d[3], [0, 0, 0, 0, 0])
    inner = _depth(5, 5, False, False, False, False)
    assert inner[2, 2] == 2 and inner[0, 2] == 0 and inner[4, 4] == 0
    alone = _depth(3, 3, True, True, True, True)
    assert (alone > 1e8).all()  # a window that is the whole image: no border counts


# ------------------------------------------------------------------------ stitching
@pytest.mark.parametrize("blend", ["gaussian", "constant", "deepest"])
@pytest.mark.parametrize("size", [(100, 130), (64, 64), (40, 200), (150, 33)])
def test_a_pointwise_model_is_stitched_exactly(blend, size):
    """Every pixel is covered, every band lands where it belongs, padding is cropped off."""
    image = _image(*size)
    spec = TileSpec(64, 48, overlap=0.25, blend=blend, batch=3)
    bands, mask, probs = _stitch(image, spec, _run_probs)
    want = _pointwise_probs(image)
    assert mask.shape == size and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, want.argmax(-1))
    np.testing.assert_allclose(probs, want, atol=1e-6)
    tops = [b.top for b in bands]
    assert tops[0] == 0 and tops == sorted(tops)
    for a, b in zip(bands, bands[1:], strict=False):
        assert a.top + len(a.mask) == b.top  # bands tile the image without gap or overlap


def test_mask_models_are_stitched_exactly():
    image = _image(90, 70, seed=3)
    spec = TileSpec(32, 32, overlap=0.5, blend="gaussian", batch=2)  # masks always take 'deepest'
    _, mask, _ = _stitch(image, spec, _run_masks, scores=False, want_probs=False)
    np.testing.assert_array_equal(mask, image[..., 0] % CLASSES)


def test_each_pixel_comes_from_the_window_it_lies_deepest_in():
    """Two windows side by side overlapping by 32 px: the seam is in the middle of the overlap."""
    image = np.zeros((32, 96, 3), np.uint8)
    spec = TileSpec(32, 64, overlap=0.5, blend="deepest")  # starts 0 and 32
    calls = iter(range(1, 10))

    def run(windows):  # window k answers class k everywhere
        out = []
        for _ in windows:
            k = next(calls)
            out.append(np.broadcast_to(np.eye(CLASSES, dtype=np.float32)[k], (32, 64, CLASSES)))
        return out

    _, mask, _ = _stitch(image, spec, run, want_probs=False)
    # overlap: columns 32..63. Window 1's right border (column 63) and window 2's left border
    # (column 32): a column at or left of 47 is deeper in window 1, right of 48 in window 2.
    assert (mask[:, :48] == 1).all() and (mask[:, 48:] == 2).all()


def test_blend_weights_average_overlapping_windows():
    """Constant weights: where two windows overlap, the result is their mean."""
    image = np.zeros((32, 96, 3), np.uint8)
    spec = TileSpec(32, 64, overlap=0.5, blend="constant")
    answers = iter([0.2, 0.6])

    def run(windows):
        return [np.full((32, 64, CLASSES), next(answers), np.float32) for _ in windows]

    _, _, probs = _stitch(image, spec, run)
    np.testing.assert_allclose(probs[:, :32], 0.2)
    np.testing.assert_allclose(probs[:, 32:64], 0.4)
    np.testing.assert_allclose(probs[:, 64:], 0.6)


def test_batches_progress_and_stats():
    image = _image(100, 100)
    spec = TileSpec(32, 32, overlap=0.0, batch=3)  # 4 x 4 windows
    sizes, seen = [], []

    def run(windows):
        sizes.append(len(windows))
        return _run_probs(windows)

    stats: dict = {}
    _stitch(image, spec, run, progress=lambda done, total: seen.append((done, total)), stats=stats)
    assert sizes == [3, 1] * 4  # rows of 4 windows, 3 per call
    assert seen[-1] == (16, 16) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert stats["windows"] == 16
    # a gaussian/constant band: probability sums and weights for one window height
    assert stats["accumulator_bytes"] == 32 * 112 * (CLASSES + 1) * 4


def test_memory_is_one_band():
    """The stitcher's arrays hold one window height, whatever the image's height."""
    spec = TileSpec(32, 32)
    small, tall = {}, {}
    list(
        tile_bands(
            _image(64, 64),
            spec,
            _run_probs,
            num_classes=CLASSES,
            scores=True,
            want_probs=False,
            stats=small,
        )
    )
    list(
        tile_bands(
            _image(640, 64),
            spec,
            _run_probs,
            num_classes=CLASSES,
            scores=True,
            want_probs=False,
            stats=tall,
        )
    )
    assert small["accumulator_bytes"] == tall["accumulator_bytes"]
    assert tall["windows"] > 5 * small["windows"]


def test_bands_are_bands():
    bands, _, _ = _stitch(_image(100, 40), TileSpec(32, 32, overlap=0.0), _run_probs)
    assert all(isinstance(b, Band) for b in bands)
    # window rows start at 0, 32, 64 and 80 (the last flush with 100 padded to 112): a band ends
    # where the next window row starts
    assert [(b.top, len(b.mask)) for b in bands] == [(0, 32), (32, 32), (64, 16), (80, 20)]


# ------------------------------------------------------------------------ arguments
def test_check_spec_accepts_and_fills_in():
    assert check_spec("model", 0.25, "gaussian", 2, (64, 96)) == TileSpec(
        64, 96, 0.25, "gaussian", 2
    )
    assert check_spec((32, 48), 0.0, "deepest", 1, None) == TileSpec(32, 48, 0.0, "deepest", 1)
    assert check_spec((64, 96), 0.9, "constant", 1, (64, 96)).overlap == 0.9


@pytest.mark.parametrize(
    "args, words",
    [
        (("model", 0.25, "gaussian", 1, None), "size-agnostic"),
        (("big", 0.25, "gaussian", 1, None), "must be 'model' or"),
        (((30, 32), 0.25, "gaussian", 1, None), "multiples of 16; use e.g. \\(16, 32\\)"),
        (((8, 32), 0.25, "gaussian", 1, None), "use e.g. \\(16, 32\\)"),
        (((0, 32), 0.25, "gaussian", 1, None), "multiples of 16"),
        (((128, 64), 0.25, "gaussian", 1, (64, 64)), "larger than this model's 64x64"),
        (((64, 128), 0.25, "gaussian", 1, (64, 64)), "larger than this model's"),
        (((64, 64), -0.1, "gaussian", 1, None), "overlap=-0.1 must lie in \\[0, 0.9\\]"),
        (((64, 64), 0.95, "gaussian", 1, None), "overlap=0.95"),
        (
            ((64, 64), 0.25, "median", 1, None),
            "blend='median' is not one of gaussian, constant, deepest",
        ),
        (((64, 64), 0.25, "gaussian", 0, None), "batch=0"),
        (((64, 64), 0.25, "gaussian", True, None), "batch=True"),
        (((64, 64), 0.25, "gaussian", 1.5, None), "batch=1.5"),
    ],
)
def test_check_spec_refuses(args, words):
    with pytest.raises(InputImageError, match=words):
        check_spec(*args)


def test_tiling_of():
    assert Tiling.of(None) is None
    t = Tiling(window=(64, 64), overlap=0.5)
    assert Tiling.of(t) is t
    assert Tiling.of((32, 32)) == Tiling(window=(32, 32))
    assert (
        Tiling.of("model") == Tiling() and Tiling().overlap == 0.25 and Tiling().blend == "gaussian"
    )


def test_check_spec_messages_in_full():
    """The whole message, fix included (a changed word in it is a changed promise to the user)."""
    cases = [
        (
            ("model", 0.25, "gaussian", 1, None),
            "tile='model': this model is size-agnostic, so it has no window size of its own; "
            "pass tile=(H, W), e.g. (512, 512)",
        ),
        (("big", 0.25, "gaussian", 1, None), "tile='big' must be 'model' or (height, width)"),
        (
            ((40, 72), 0.25, "gaussian", 1, None),
            "tile=(40, 72): the network pools four times, so window sides must be positive "
            "multiples of 16; use e.g. (32, 64)",
        ),
        (
            ((128, 64), 0.25, "gaussian", 1, (64, 64)),
            "tile=(128, 64) is larger than this model's 64x64; "
            "use tile='model' (a smaller tile is padded to the model's size)",
        ),
        (
            ((64, 64), 1.0, "gaussian", 1, None),
            "overlap=1.0 must lie in [0, 0.9] (0.25 is a good start)",
        ),
        (
            ((64, 64), 0.25, "median", 1, None),
            "blend='median' is not one of gaussian, constant, deepest",
        ),
        (
            ((64, 64), 0.25, "gaussian", 0, None),
            "Tiling batch=0 (windows per session call, --tile-batch) must be an integer >= 1",
        ),
    ]
    for args, message in cases:
        with pytest.raises(InputImageError) as info:
            check_spec(*args)
        assert str(info.value) == message
    # the model's own size is allowed, exactly
    assert check_spec((64, 48), 0.25, "gaussian", 1, (64, 48)).height == 64


def test_defaults():
    assert TileSpec(32, 32) == TileSpec(32, 32, 0.25, "gaussian", 1)
    assert Tiling() == Tiling("model", 0.25, "gaussian", None)
    assert Band(0, np.zeros((1, 1), np.uint8)).probs is None


@pytest.mark.parametrize("scores", [True, False], ids=["scores", "masks"])
def test_windows_that_only_touch_are_stitched_exactly(scores):
    """No overlap: every pixel lies in one window, at depth 0 on its inner borders, and is taken all the same."""
    image = _image(96, 80, seed=5)
    spec = TileSpec(32, 32, overlap=0.0, blend="deepest")
    run = _run_probs if scores else _run_masks
    bands, mask, _ = _stitch(image, spec, run, scores=scores, want_probs=False)
    np.testing.assert_array_equal(mask, image[..., 0] % CLASSES)
    # a mask model has no probabilities to give, even when asked
    bands = list(
        tile_bands(image, spec, _run_masks, num_classes=CLASSES, scores=False, want_probs=True)
    )
    assert all(b.probs is None for b in bands)


def test_gaussian_blend_weighs_each_window_by_its_gaussian():
    """Two windows disagree: in their overlap the result is their gaussian-weighted mean."""
    image = np.zeros((32, 96, 3), np.uint8)
    spec = TileSpec(32, 64, overlap=0.5, blend="gaussian")  # windows at columns 0 and 32
    answers = iter([0.2, 0.6])

    def run(windows):
        return [np.full((32, 64, CLASSES), next(answers), np.float32) for _ in windows]

    _, _, probs = _stitch(image, spec, run)
    g = _gaussian(32, 64)
    col = 40  # column 40 of the image: column 40 of window 1, column 8 of window 2
    want = (0.2 * g[:, col] + 0.6 * g[:, col - 32]) / (g[:, col] + g[:, col - 32])
    np.testing.assert_allclose(probs[:, col, 0], want, rtol=1e-5)
    assert not np.allclose(want, 0.4)  # not the plain mean
