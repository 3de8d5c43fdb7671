"""The Keras model is exactly the reference model's: names, shapes, params, wiring, initializers."""

import numpy as np
import pytest

from tests.model_summary import SEED_CONCATS, SEED_SUMMARY
from unet_export import SEED_PARAMS, ConfigError, build_vgg19_unet


@pytest.fixture(scope="module")
def seed_model():
    return build_vgg19_unet()


def test_param_count_is_the_seeds(seed_model):
    assert seed_model.count_params() == SEED_PARAMS == 30_202_133


def test_every_layer_matches_the_model_summary(seed_model):
    got = [
        (layer.name, tuple(layer.output.shape[1:]), layer.count_params())
        for layer in seed_model.layers
    ]
    assert len(got) == len(SEED_SUMMARY)
    for row_got, row_seed in zip(got, SEED_SUMMARY, strict=True):
        assert row_got == row_seed


def test_concat_wiring_is_skip_first(seed_model):
    for name, (skip, up) in SEED_CONCATS.items():
        inbound = seed_model.get_layer(name)._inbound_nodes[0]
        sources = [t._keras_history.operation.name for t in inbound.input_tensors]
        assert sources == [skip, up], name


def test_initializers_are_the_seeds(seed_model):
    # Encoder and head: Keras' default Glorot-uniform; decoder: He-normal (seed).
    assert type(seed_model.get_layer("conv1-1").kernel_initializer).__name__ == "GlorotUniform"
    assert type(seed_model.get_layer("conv2d").kernel_initializer).__name__ == "HeNormal"
    assert type(seed_model.get_layer("conv2d_8").kernel_initializer).__name__ == "GlorotUniform"
    assert seed_model.get_layer("conv2d_8").activation.__name__ == "softmax"


def test_seed_makes_init_reproducible():
    a = build_vgg19_unet((32, 32, 3), 3, seed=1, width_multiplier=0.125).get_weights()
    b = build_vgg19_unet((32, 32, 3), 3, seed=1, width_multiplier=0.125).get_weights()
    c = build_vgg19_unet((32, 32, 3), 3, seed=2, width_multiplier=0.125).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_seeding_leaves_the_global_random_state_alone():
    """A training script that exports (export_model(keras_model=...)) keeps its own random streams."""
    import random

    import keras

    keras.utils.set_random_seed(123)
    expected = (random.random(), np.random.random(), float(keras.random.uniform(()).numpy()))
    keras.utils.set_random_seed(123)
    build_vgg19_unet((32, 32, 3), 3, seed=5, width_multiplier=0.125)
    assert (
        random.random(),
        np.random.random(),
        float(keras.random.uniform(()).numpy()),
    ) == expected


def test_dynamic_model_runs_at_several_sizes():
    model = build_vgg19_unet((None, None, 3), 4, width_multiplier=0.125)
    for h, w in ((32, 48), (64, 32)):
        out = model(np.zeros((1, h, w, 3), np.float32))
        assert out.shape == (1, h, w, 4)


@pytest.mark.parametrize(
    "size, hint",
    [((500, 512), "use 496 or 512"), ((512, 8), "use 16"), ((0, 32), "positive multiple")],
)
def test_bad_sizes_say_the_nearest_valid_ones(size, hint):
    with pytest.raises(ConfigError, match=hint):
        build_vgg19_unet((*size, 3))


@pytest.mark.parametrize("classes", [0, -3, 2.5, True])
def test_bad_class_counts_are_refused(classes):
    with pytest.raises(ConfigError, match="num_classes"):
        build_vgg19_unet((32, 32, 3), classes)
