"""Segmentation networks of other architectures, with random weights (no downloads).

Examples of what a user may bring to ``export-unet --model``, used by the
tests (at 64-96 px, where each exports in seconds) and by
``bench-unet lab networks`` (which saves them at any size, for
``bench-unet --model``). Few filters each: they stand for families, not
for accuracy:

* :func:`mobilenet_unet`: a UNet on a ``keras.applications`` MobileNetV2
  encoder (depthwise convs, ReLU6, batch norm), nearest upsampling +
  concat + 3x3 conv decoder, 1x1 conv with softmax built in.
* :func:`deeplab_v3`: DeepLabV3-style: a strided conv backbone, atrous
  (dilated) convs in an ASPP with an image-pooling branch, bilinear
  upsampling, logits at 1/4 of the input (the export resizes them).
* :func:`segformer_like`: a SegFormer-like model: overlapping patch
  embeddings, efficient self-attention (keys and values from a strided
  conv, SegFormer's spatial reduction) and LayerNorm on token sequences,
  an all-MLP decoder, a ``Softmax`` layer on 1/4-resolution scores.

``keras.utils.set_random_seed`` makes each build reproducible. Random BatchNorm
statistics are set to non-trivial values so that the folded arithmetic is
exercised, and the classifier's kernel is scaled so that most pixels have a
clear winner, as in a trained model (a random init gives a flat softmax, on
which mask gates have no confident pixel to check).
"""

from __future__ import annotations

import numpy as np


def _randomize_batchnorm(model, seed: int) -> None:
    """Moving means/variances away from 0/1, so that inference-mode batch norm does real work."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.8, 1.2, gamma.shape).astype(np.float32),
                    rng.normal(0, 0.1, beta.shape).astype(np.float32),
                    rng.normal(0, 0.1, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 1.5, var.shape).astype(np.float32),
                ]
            )


def _peaked(model, layer: str, scale: float = 20.0):
    """Scale the classifier's kernel: a peaked softmax, as after training."""
    head = model.get_layer(layer)
    kernel, *rest = head.get_weights()
    head.set_weights([kernel * scale, *rest])
    return model


def mobilenet_unet(size: int | None = 96, classes: int = 5, seed: int = 0):
    """A UNet on MobileNetV2 (alpha 0.35): skips at 1/2 .. 1/16, nearest upsampling, softmax conv head.

    ``size``: a multiple of 32, or None for a size-agnostic model.
    """
    import keras

    keras.utils.set_random_seed(seed)
    encoder = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None, alpha=0.35
    )  # size None: any H and W (multiples of 32)
    skips = [
        encoder.get_layer(name).output
        for name in (
            "block_13_expand_relu",  # 1/16
            "block_6_expand_relu",  # 1/8
            "block_3_expand_relu",  # 1/4
            "block_1_expand_relu",  # 1/2
        )
    ]
    x = encoder.output  # 1/32
    for i, (skip, filters) in enumerate(zip(skips, (64, 32, 24, 16), strict=True)):
        x = keras.layers.UpSampling2D(2, name=f"dec{i}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{i}_cat")([x, skip])
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"dec{i}_a")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"dec{i}_b")(x)
    x = keras.layers.UpSampling2D(2, name="dec_up_full")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="dec_full")(x)
    out = keras.layers.Conv2D(classes, 1, activation="softmax", name="classifier")(x)
    model = keras.Model(encoder.input, out, name="mobilenetv2_unet")
    _randomize_batchnorm(model, seed)
    return _peaked(model, "classifier")


def _conv_bn(x, filters, kernel, name, strides=1, dilation=1):
    import keras

    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        dilation_rate=dilation,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def deeplab_v3(size: int = 64, classes: int = 4, seed: int = 0):
    """DeepLabV3-style: output stride 8 backbone, ASPP (rates 2, 4, 6 and image pooling), logits at 1/4.

    ``size`` must be a multiple of 8.
    """
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((size, size, 3), name="image")
    x = _conv_bn(image, 16, 3, "stem", strides=2)  # 1/2
    low = _conv_bn(x, 24, 3, "block1", strides=2)  # 1/4: the decoder's low-level feature
    x = _conv_bn(low, 32, 3, "block2", strides=2)  # 1/8
    x = _conv_bn(x, 32, 3, "block3", dilation=2)  # atrous instead of a further stride
    branches = [_conv_bn(x, 16, 1, "aspp0")]
    branches += [_conv_bn(x, 16, 3, f"aspp{r}", dilation=r) for r in (2, 4, 6)]
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = _conv_bn(pooled, 16, 1, "aspp_pool_proj")
    pooled = keras.layers.UpSampling2D(size // 8, interpolation="bilinear", name="aspp_pool_up")(
        pooled
    )
    x = keras.layers.Concatenate(name="aspp_cat")([*branches, pooled])
    x = _conv_bn(x, 32, 1, "aspp_proj")
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="decoder_up")(x)  # 1/4
    x = keras.layers.Concatenate(name="decoder_cat")([x, _conv_bn(low, 8, 1, "low_proj")])
    x = _conv_bn(x, 32, 3, "decoder")
    logits = keras.layers.Conv2D(classes, 1, name="logits")(x)  # linear: logits at 1/4
    model = keras.Model(image, logits, name="deeplabv3")
    _randomize_batchnorm(model, seed)
    return _peaked(model, "logits")


def _mix_block(tokens, hw: tuple[int, int], dim: int, heads: int, reduction: int, name: str):
    """Pre-norm transformer block with SegFormer's efficient self-attention.

    Keys and values come from the token map shrunk by a ``reduction`` x
    ``reduction`` strided conv, so attention costs (HW)^2 / reduction^2, not (HW)^2.
    """
    import keras

    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(tokens)
    kv = keras.layers.Reshape((*hw, dim), name=f"{name}_kv_map")(x)
    kv = keras.layers.Conv2D(dim, reduction, strides=reduction, name=f"{name}_sr")(kv)
    kv = keras.layers.Reshape((-1, dim), name=f"{name}_kv_tokens")(kv)
    kv = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_kv_ln")(kv)
    x = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"{name}_attn")(x, kv)
    tokens = keras.layers.Add(name=f"{name}_add1")([tokens, x])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(tokens)
    x = keras.layers.Dense(2 * dim, activation="gelu", name=f"{name}_mlp1")(x)
    x = keras.layers.Dense(dim, name=f"{name}_mlp2")(x)
    return keras.layers.Add(name=f"{name}_add2")([tokens, x])


def segformer_like(size: int = 64, classes: int = 3, seed: int = 0):
    """Two hierarchical stages (1/4, 1/8) of attention on tokens, an MLP decoder, Softmax at 1/4.

    ``size`` must be a multiple of 64 (the 1/8 stage's 4x4 spatial reduction).
    """
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input((size, size, 3), name="image")
    features, x = [], image
    for stage, (dim, stride, kernel, reduction) in enumerate(((16, 4, 7, 8), (32, 2, 3, 4))):
        x = keras.layers.Conv2D(
            dim, kernel, strides=stride, padding="same", name=f"stage{stage}_embed"
        )(x)
        h, w = x.shape[1], x.shape[2]
        tokens = keras.layers.Reshape((h * w, dim), name=f"stage{stage}_tokens")(x)
        tokens = keras.layers.LayerNormalization(epsilon=1e-6, name=f"stage{stage}_norm0")(tokens)
        tokens = _mix_block(tokens, (h, w), dim, 2, reduction, f"stage{stage}_block")
        tokens = keras.layers.LayerNormalization(epsilon=1e-6, name=f"stage{stage}_norm")(tokens)
        x = keras.layers.Reshape((h, w, dim), name=f"stage{stage}_map")(tokens)
        features.append(x)
    quarter = features[0].shape[1]
    decoded = []
    for i, f in enumerate(features):
        f = keras.layers.Dense(16, name=f"decode{i}_mlp")(f)
        factor = quarter // f.shape[1]
        if factor > 1:
            f = keras.layers.UpSampling2D(factor, interpolation="bilinear", name=f"decode{i}_up")(f)
        decoded.append(f)
    x = keras.layers.Concatenate(name="decode_cat")(decoded)
    x = keras.layers.Dense(16, activation="relu", name="decode_fuse")(x)
    x = keras.layers.Conv2D(classes, 1, name="decode_classifier")(x)
    probs = keras.layers.Softmax(name="probabilities")(x)  # at 1/4, like SegFormer's
    return _peaked(keras.Model(image, probs, name="segformer_like"), "decode_classifier")


#: name -> builder(size): what ``bench-unet lab networks`` saves.
NETWORKS = {
    "mobilenet_unet": mobilenet_unet,
    "deeplab_v3": deeplab_v3,
    "segformer_like": segformer_like,
}


def main(argv: list[str] | None = None, prog: str = "bench-unet lab networks") -> int:
    """Save the example networks as ``.keras`` files (random weights), for ``bench-unet --model``."""
    import argparse
    import os
    from pathlib import Path

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder to write NAME.keras into")
    p.add_argument("--size", type=int, default=512, help="input height and width (multiple of 64)")
    p.add_argument("--only", nargs="+", choices=list(NETWORKS), help="these networks only")
    args = p.parse_args(argv)
    if args.size < 64 or args.size % 64:
        p.error(
            f"--size {args.size}: the networks need a multiple of 64 (e.g. {max(64, args.size // 64 * 64)})"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or NETWORKS:
        path = args.out / f"{name}.keras"
        model = NETWORKS[name](args.size)
        model.save(path)
        print(f"{path}: {model.count_params():,} parameters, {args.size}x{args.size}")
    return 0
