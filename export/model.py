"""The reference VGG19-UNet as a Keras functional model.

The network is described by two small tables (encoder stages, decoder
stages) so that its shape can be read at a glance and tested row by row
against the reference model's ``model.summary()``. Every layer gets an explicit name:
the encoder names come from the specification (``conv1-1`` ... ``conv5-4``,
``pool1`` ... ``pool4``) and the decoder names are the ones Keras gave the
reference model's unnamed layers in a fresh process (``up_sampling2d``, ``concatenate``,
``conv2d`` ... ``conv2d_8``). Naming them explicitly keeps them stable even
when several models are built in one process, so ``.weights.h5`` files,
reports and ONNX node names always read the same.
"""

from __future__ import annotations

from typing import Sequence

from .errors import ConfigError

__all__ = [
    "build_vgg19_unet",
    "validate_spatial_size",
    "ENCODER_STAGES",
    "DECODER_FILTERS",
    "SIZE_MULTIPLE",
    "SEED_PARAMS",
    "HEAD_LAYER",
]

#: (filters, number of 3x3 convs) per VGG19 block; block i's convs are ``convi-j``.
ENCODER_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
#: Filters of the two 3x3 convs in each decoder stage, deepest first (U4, U3, U2, U1).
DECODER_FILTERS: tuple[int, ...] = (512, 256, 128, 64)
#: Four 2x2 poolings: H and W must be divisible by 2**4 for the skips to line up.
SIZE_MULTIPLE = 16
#: Parameter count of the reference model at 512x512x3 and 21 classes (its summary table).
SEED_PARAMS = 30_202_133
#: Name of the 1x1 softmax classifier (the last conv in the reference model's summary).
HEAD_LAYER = "conv2d_8"


def _nearest_multiples(value: int) -> tuple[int, int]:
    lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
    upper = -(-value // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return lower, max(upper, SIZE_MULTIPLE)


def validate_spatial_size(height: int | None, width: int | None) -> None:
    """Raise :class:`ConfigError` unless H and W are ``None`` or positive multiples of 16.

    The message names the bad value and the nearest valid sizes, because
    "pad or resize to 528" is more useful than "invalid shape".
    """
    for axis, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < SIZE_MULTIPLE
            or value % SIZE_MULTIPLE
        ):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                lo, hi = _nearest_multiples(value)
                hint = f"use {lo} or {hi}" if lo != hi else f"use {lo}"
            else:
                hint = f"use a positive multiple of {SIZE_MULTIPLE}, e.g. 512"
            raise ConfigError(
                f"input {axis} {value!r} is not allowed: the network pools four times, so it must be "
                f"a positive multiple of {SIZE_MULTIPLE}; {hint}"
            )


def _check_arguments(input_shape, num_classes, width_multiplier) -> None:
    """ConfigError naming the bad argument of :func:`build_vgg19_unet`, before Keras is imported."""
    if len(tuple(input_shape)) != 3:
        raise ConfigError(f"input_shape {tuple(input_shape)!r} must be (height, width, channels)")
    height, width, channels = input_shape
    validate_spatial_size(height, width)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"input channels {channels!r} must be a positive integer (3 for RGB)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(
            f"num_classes {num_classes!r} must be an integer >= 1 (21 for Pascal VOC)"
        )
    if not (isinstance(width_multiplier, (int, float)) and 0 < width_multiplier <= 4):
        raise ConfigError(
            f"width_multiplier {width_multiplier!r} must be in (0, 4]; 1.0 builds the reference network"
        )


def _encoder(inputs, conv3x3) -> list:
    """VGG19's five blocks; each block's last activation, the deepest last (the skips, and the bottom)."""
    from keras import layers

    x, skips = inputs, []
    for block, (filters, depth) in enumerate(ENCODER_STAGES, start=1):
        if block > 1:
            x = layers.MaxPooling2D(pool_size=2, strides=2, name=f"pool{block - 1}")(x)
        for j in range(1, depth + 1):
            x = conv3x3(filters, f"conv{block}-{j}")(x)
        skips.append(x)
    return skips


def _decoder(skips: list, conv3x3):
    """Per stage: upsample, concat the skip first (as the reference model does), two convs."""
    from keras import layers

    x = skips.pop()
    conv_index = 0
    for stage, filters in enumerate(DECODER_FILTERS):
        suffix = f"_{stage}" if stage else ""
        up = layers.UpSampling2D(size=2, interpolation="nearest", name=f"up_sampling2d{suffix}")(x)
        x = layers.Concatenate(axis=3, name=f"concatenate{suffix}")([skips.pop(), up])
        for _ in range(2):
            name = f"conv2d_{conv_index}" if conv_index else "conv2d"
            x = conv3x3(filters, name, "he")(x)
            conv_index += 1
    return x


def build_vgg19_unet(
    input_shape: Sequence[int | None] = (512, 512, 3),
    num_classes: int = 21,
    *,
    seed: int | None = None,
    width_multiplier: float = 1.0,
):
    """Build the reference VGG19-UNet.

    Args:
        input_shape: ``(H, W, C)``; H and W are multiples of 16 or ``None``
            for a size-agnostic model (then they must be multiples of 16 at
            run time). C is 3 in the reference model; other values are allowed for
            experiments.
        num_classes: classes of the softmax head (21 in the reference model).
        seed: when given, seeds each layer's initializer so the untrained
            model is reproducible (the reference model's initializers are kept:
            Glorot-uniform in the encoder and head, He-normal in the decoder,
            zero biases); the process's global random state is not touched.
        width_multiplier: multiplier on every conv's filter count. 1.0 is the reference network;
            narrow models (e.g. 0.125) convert in seconds instead of half a
            minute, which is what the test suite uses to cover the
            conversion logic over many configurations.

    Returns:
        A ``keras.Model`` named ``vgg19_unet``: NHWC float32 in, NHWC
        softmax probabilities out, with the reference model's layer names and wiring.
    """
    _check_arguments(input_shape, num_classes, width_multiplier)
    height, width, channels = input_shape

    import keras  # lazy: importing unet_export must not start TensorFlow
    from keras import layers

    # Each layer's initializer gets a seed of its own (seed + its index): reproducible, and the
    # process's global seeds (Python, numpy, TensorFlow) are left alone, which matters when a
    # training script exports.
    index = iter(range(10_000))

    def init(kind: str):
        name = {"glorot": "GlorotUniform", "he": "HeNormal"}[kind]
        return getattr(keras.initializers, name)(
            seed=None if seed is None else seed * 1000 + next(index)
        )

    def conv3x3(filters: int, name: str, kind: str = "glorot"):
        filters = max(1, round(filters * width_multiplier))
        return layers.Conv2D(
            filters,
            3,
            strides=1,
            activation="relu",
            padding="same",
            name=name,
            kernel_initializer=init(kind),
        )

    inputs = layers.Input(shape=(height, width, channels), name="input_1")
    x = _decoder(_encoder(inputs, conv3x3), conv3x3)
    outputs = layers.Conv2D(
        num_classes,
        1,
        strides=1,
        activation="softmax",
        name=HEAD_LAYER,
        kernel_initializer=init("glorot"),
    )(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="vgg19_unet")
