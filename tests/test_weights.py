"""User weights load into the reference model, in every format, or fail clearly."""

import numpy as np
import pytest

from unet_export import WeightsError, build_vgg19_unet
from unet_export.weights import load_encoder_weights, load_weights, sha256_file, stored_num_classes

NARROW = 0.125


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A narrow 'trained' model saved in all three formats."""
    model = build_vgg19_unet((32, 32, 3), 4, seed=11, width_multiplier=NARROW)
    root = tmp_path_factory.mktemp("w")
    paths = {"keras": root / "m.keras", "weights.h5": root / "m.weights.h5", "h5": root / "m.h5"}
    model.save(paths["keras"])
    model.save_weights(paths["weights.h5"])
    model.save(paths["h5"])  # legacy HDF5, full model
    return model, paths


@pytest.mark.parametrize("fmt", ["keras", "weights.h5", "h5"])
def test_round_trip(trained, fmt):
    model, paths = trained
    fresh = build_vgg19_unet((32, 32, 3), 4, seed=99, width_multiplier=NARROW)
    digest = load_weights(fresh, paths[fmt])
    assert digest == sha256_file(paths[fmt]) and len(digest) == 64
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["keras", "weights.h5", "h5"])
@pytest.mark.parametrize("shape", [(64, 48, 3), (None, None, 3)])
def test_weights_trained_at_another_size_load(trained, fmt, shape):
    """Users train on crops (here 32x32) and export at 512, or size-agnostic: convolution weights do not depend on H, W."""
    model, paths = trained
    other = build_vgg19_unet(shape, 4, seed=99, width_multiplier=NARROW)
    load_weights(other, paths[fmt])
    for a, b in zip(model.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_encoder_weights_map_block_names(tmp_path):
    import keras

    vgg = keras.applications.VGG19(weights=None, include_top=False, input_shape=(None, None, 3))
    path = tmp_path / "vgg19_notop.weights.h5"
    vgg.save_weights(path)
    model = build_vgg19_unet((32, 32, 3), 21, seed=5)
    decoder_before = model.get_layer("conv2d").get_weights()[0].copy()
    load_encoder_weights(model, path)
    np.testing.assert_array_equal(
        model.get_layer("conv1-1").get_weights()[0], vgg.get_layer("block1_conv1").get_weights()[0]
    )
    np.testing.assert_array_equal(
        model.get_layer("conv5-4").get_weights()[0], vgg.get_layer("block5_conv4").get_weights()[0]
    )
    np.testing.assert_array_equal(model.get_layer("conv2d").get_weights()[0], decoder_before)


def test_other_class_count_names_the_layer(trained):
    _, paths = trained
    fresh = build_vgg19_unet((32, 32, 3), 7, width_multiplier=NARROW)
    for fmt in ("keras", "weights.h5"):
        with pytest.raises(WeightsError, match="conv2d_8|num-classes"):
            load_weights(fresh, paths[fmt])


@pytest.mark.parametrize("fmt", ["keras", "weights.h5", "h5"])
def test_stored_class_count_is_read_from_every_format(trained, fmt):
    _, paths = trained
    assert stored_num_classes(paths[fmt]) == 4


@pytest.mark.slow  # trains a step to get optimizer slots into the file
def test_stored_class_count_ignores_optimizer_slots(tmp_path):
    # A .keras saved after training also holds Adam's moments of the head's
    # kernel: same 1x1 shape, same class count, still one answer.
    model = build_vgg19_unet((32, 32, 3), 3, seed=2, width_multiplier=NARROW)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.zeros((1, 32, 32, 3), np.float32)
    model.fit(x, np.zeros((1, 32, 32), np.int32), epochs=1, verbose=0)
    model.save(tmp_path / "trained.keras")
    assert stored_num_classes(tmp_path / "trained.keras") == 3


def test_stored_class_count_unknown_is_none(tmp_path):
    import keras

    # No 1x1 kernel, two different 1x1 widths, and bytes that are no HDF5/zip at all.
    no_head = keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    no_head.save(tmp_path / "no_head.keras")
    two_heads = keras.Sequential(
        [keras.layers.Input((8, 8, 3)), keras.layers.Conv2D(4, 1), keras.layers.Conv2D(6, 1)]
    )
    two_heads.save_weights(tmp_path / "two.weights.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 100)
    (tmp_path / "junk.keras").write_bytes(b"not a zip" * 100)
    for name in ("no_head.keras", "two.weights.h5", "junk.h5", "junk.keras"):
        assert stored_num_classes(tmp_path / name) is None, name


def test_other_architecture_is_refused(tmp_path):
    import keras

    other = keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Conv2D(2, 3)])
    path = tmp_path / "other.keras"
    other.save(path)
    with pytest.raises(WeightsError, match="not this architecture"):
        load_weights(build_vgg19_unet((32, 32, 3), 4, width_multiplier=NARROW), path)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras", ".h5"])
def test_corrupt_or_truncated_files(trained, tmp_path, suffix):
    _, paths = trained
    source = paths[
        "keras" if suffix == ".keras" else ("weights.h5" if suffix == ".weights.h5" else "h5")
    ]
    truncated = tmp_path / f"trunc{suffix}"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    model = build_vgg19_unet((32, 32, 3), 4, seed=1, width_multiplier=NARROW)
    before = [w.copy() for w in model.get_weights()]
    for path in (truncated, garbage):
        with pytest.raises(WeightsError, match="cannot load|not this architecture"):
            load_weights(model, path)
    # A failed load leaves the model as it was.
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_and_unsupported_files(tmp_path):
    model = build_vgg19_unet((32, 32, 3), 4, width_multiplier=NARROW)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(model, tmp_path / "nope.keras")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported suffix"):
        load_weights(model, tmp_path / "w.pt")
