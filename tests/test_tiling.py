"""Tiled inference: exact where the receptive field fits, seamless elsewhere, memory bounded by the band.

Measured on the trained labelled fixture (5 classes, trained on 64x64
crops), 256x256 and 384x384 images, windows of 64 and 128 px: masks from
gaussian-blended windows agree with whole-image inference on >= 99.997% of
the confident pixels, constant weights on >= 99.96%, and the argmax model
(deepest-window stitching) with the softmax model (gaussian) on >= 99.997%
of all pixels; the bounds below are 99.9%.
"""

import itertools

import numpy as np
import pytest
from PIL import Image

from tests.conftest import NARROW, NUM_CLASSES, run_cli
from unet_export import ExportConfig, export_model
from unet_runtime import InputImageError, Segmenter, SegmenterError
from unet_runtime.metrics import top2_margin
from unet_runtime.tiling import Tiling, window_starts

AGREEMENT = 0.999


@pytest.fixture(scope="module")
def dynamic(confident_weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiling")
    base = dict(
        dynamic_size=True,
        num_classes=NUM_CLASSES,
        width_multiplier=NARROW,
        weights=str(confident_weights),
    )
    return {
        head: export_model(ExportConfig(**base, head=head), root / f"{head}.onnx").path
        for head in ("softmax", "argmax")
    }


@pytest.fixture(scope="module")
def trained(labelled, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiling_trained")
    base = dict(
        dynamic_size=True, width_multiplier=labelled.width_multiplier, weights=str(labelled.weights)
    )
    return {
        head: export_model(ExportConfig(**base, head=head), root / f"{head}.onnx").path
        for head in ("softmax", "argmax")
    }


@pytest.mark.parametrize("size", [(640, 640), (650, 620)])
def test_exact_where_the_receptive_field_fits(dynamic, size):
    """512-px windows 384 px apart: every pixel lies >= 190 px deep in some window, more than the network's
    receptive field reaches, and windows start on the pooling grid: deepest-window stitching is whole-image inference."""
    img = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    with Segmenter(dynamic["softmax"], providers="cpu") as seg:
        whole = seg.predict_proba(img)
        tiled = seg.predict_proba(img, tile=Tiling((512, 512), overlap=0.75, blend="deepest"))
    assert tiled.shape == whole.shape == (*size, NUM_CLASSES)
    # measured equal to the bit here (the same convolutions on the same pixels); 1e-6 leaves room for
    # a CPU whose GEMM blocking depends on the image size
    np.testing.assert_allclose(tiled, whole, atol=1e-6, rtol=0)


def test_seams_on_a_trained_model(trained, labelled):
    from unet_bench.fixture import shapes_sample

    img, _ = shapes_sample(np.random.default_rng(11), 256, labelled.num_classes)
    with (
        Segmenter(trained["softmax"], providers="cpu") as soft,
        Segmenter(trained["argmax"], providers="cpu") as arg,
    ):
        whole = soft.predict_proba(img)
        confident = top2_margin(whole) >= 0.05
        # a trained model: the confident set is most of the image (measured 99.98%)
        assert confident.mean() > 0.999
        for blend in ("gaussian", "constant"):
            mask = soft.predict(img, tile=Tiling((64, 64), overlap=0.25, blend=blend))
            assert (mask == whole.argmax(-1))[confident].mean() >= AGREEMENT, blend
        # The two stitching rules (scores blended, masks from the deepest window) give the same
        # mask.
        by_scores = soft.predict(img, tile=(64, 64))
        by_depth = arg.predict(img, tile=(64, 64))
    assert (by_scores == by_depth).mean() >= AGREEMENT


def test_memory_is_the_band_not_the_image(dynamic):
    """The stitcher's accumulators are one band of windows wide by tall: a 10x taller image holds the same bytes."""
    held = {}
    with Segmenter(dynamic["softmax"], providers="cpu") as seg:
        for height in (320, 3200):
            stats = {}
            bands = list(
                seg.iter_tiles(
                    np.zeros((height, 200, 3), np.uint8),
                    tile=(64, 64),
                    probabilities=True,
                    stats=stats,
                )
            )
            held[height] = stats["accumulator_bytes"]
            assert sum(len(b.mask) for b in bands) == height and len(bands) > 1
    # probabilities and weights, 64 rows
    assert held[320] == held[3200] == 64 * 208 * (NUM_CLASSES * 4 + 4)


def test_window_starts_cover_the_image_on_the_grid():
    for length, tile, stride in ((100, 64, 48), (640, 512, 128), (48, 64, 48), (1000, 256, 192)):
        starts = window_starts(length, tile, stride)
        padded = -(-length // 16) * 16
        assert starts[0] == 0 and all(s % 16 == 0 for s in starts)
        assert starts[-1] + tile >= min(padded, length) and all(
            b - a <= tile for a, b in itertools.pairwise(starts)
        )


def test_tiles_on_fixed_size_models_and_lists(narrow_export):
    path = narrow_export(input_size=(32, 32), head="argmax").path
    imgs = [
        np.random.default_rng(i).integers(0, 256, s, dtype=np.uint8)
        for i, s in enumerate([(70, 90, 3), (20, 20, 3)])
    ]
    with Segmenter(path, providers="cpu") as seg:
        masks = seg.predict(imgs, tile="model")
        # smaller than the model: padded to 32x32
        small = seg.predict(imgs[0], tile=Tiling((16, 16), overlap=0))
        with pytest.raises(SegmenterError, match="--head argmax"):
            seg.predict_proba(imgs[0], tile="model")
    assert [m.shape for m in masks] == [(70, 90), (20, 20)] and small.shape == (70, 90)
    assert all(m.max() < NUM_CLASSES for m in masks)


def test_bad_tiling_arguments_are_refused(narrow_export, dynamic):
    img = np.zeros((64, 64, 3), np.uint8)
    with (
        Segmenter(narrow_export(input_size=(32, 32)).path, providers="cpu") as fixed,
        Segmenter(dynamic["softmax"], providers="cpu") as agnostic,
    ):
        for seg, kwargs, message in [
            (fixed, dict(tile=(48, 48)), "larger than this model's 32x32"),
            (fixed, dict(tile=(30, 32)), "multiples of 16"),
            (fixed, dict(tile=Tiling(overlap=0.95)), r"overlap=0.95 must lie in \[0, 0.9\]"),
            (fixed, dict(tile=Tiling(blend="median")), "blend='median' is not one of"),
            (fixed, dict(tile=Tiling(batch=0)), "batch=0"),
            (agnostic, dict(tile="model"), "size-agnostic.*pass tile=\\(H, W\\)"),
            (fixed, dict(tile="big"), "must be 'model' or \\(height, width\\)"),
        ]:
            with pytest.raises(InputImageError, match=message):
                seg.predict(img, **kwargs)


def test_cli_streams_the_mask_band_by_band(dynamic, tmp_path):
    img = np.random.default_rng(4).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "scene.png")
    proc = run_cli(
        "unet_runtime.cli",
        str(dynamic["softmax"]),
        str(tmp_path / "scene.png"),
        "--out",
        str(tmp_path / "out"),
        "--tile",
        "128x128",
        "--probabilities",
        "--providers",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "windows" in proc.stderr  # the progress bar counts windows
    png = Image.open(tmp_path / "out" / "scene.png")
    mask = np.asarray(png)
    probs = np.load(tmp_path / "out" / "scene.probs.npy")
    assert png.mode == "P" and mask.shape == (300, 420) and probs.shape == (300, 420, NUM_CLASSES)
    with Segmenter(dynamic["softmax"], providers="cpu") as seg:
        np.testing.assert_array_equal(mask, seg.predict(img, tile=(128, 128)))
    np.testing.assert_array_equal(probs.argmax(-1), mask)
    # no temporaries
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "scene.png",
        "scene.probs.npy",
    ]
    bad = run_cli(
        "unet_runtime.cli",
        str(dynamic["softmax"]),
        str(tmp_path / "scene.png"),
        "--out",
        str(tmp_path / "out2"),
        "--tile",
        "100x100",
    )
    assert bad.returncode == 1 and "multiples of 16" in bad.stderr.strip().splitlines()[-1]
