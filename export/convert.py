"""Keras -> ONNX with tf2onnx, and the conversion-time choices.

Why a *twin* of the Keras model is converted rather than the model itself:

* Keras 3's ``UpSampling2D`` is a ``repeat`` along H and W, which tf2onnx
  lowers to Shape/Gather/Tile/Reshape chains. TF's ``ResizeNearestNeighbor``
  without half-pixel centres computes exactly the same thing and tf2onnx
  lowers it to one ONNX ``Resize`` (asymmetric, floor). (``tf.image.resize``
  would use half-pixel centres, which map to a deprecated ONNX mode.)
* The head's activation is split off so the same graph can end in softmax,
  raw logits, or an argmax mask (argmax of the logits equals argmax of the
  softmax, and skips 21 exponentials per pixel).

The twin shares the user's weights and wiring (``keras.models.clone_model``),
so verification against the untouched Keras model checks the swap too.

``tf2onnx.convert.from_function`` is used rather than ``from_keras``: with
Keras 3 both wrap the model in a ``tf.function``, but ``from_function`` lets
us name the input and control the signature (static or dynamic H/W).
"""

from __future__ import annotations

import logging

from unet_runtime.images import normalization
from unet_runtime.model_info import INPUT_NAME, OUTPUT_NAMES

from .errors import ConversionError
from .model import HEAD_LAYER

__all__ = ["convert_keras", "keras_logits_model", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAMES"]

log = logging.getLogger(__name__)

#: Resize with ``coordinate_transformation_mode=asymmetric`` and ``nearest_mode``
#: needs opset 11; ArgMax/Softmax on an explicit axis behave as here from 13.
MIN_OPSET = 13
#: The newest opset tf2onnx 1.17 emits (it knows opsets up to 18).
MAX_OPSET = 18
#: 17 is supported by every ONNX Runtime since 1.11 and by TensorRT 8.6+,
#: and nothing in this network needs a newer op.
DEFAULT_OPSET = 17


def keras_logits_model(model):
    """The user's model with the head's softmax removed: the logits reference."""
    return _twin(model, swap_upsampling=False)


def _twin(model, swap_upsampling: bool = True):
    """Clone ``model`` with a linear head (and nearest-resize upsampling), same weights."""
    import keras
    import tensorflow as tf

    class NearestUpsample(keras.layers.Layer):
        """``UpSampling2D(interpolation="nearest")`` as one TF resize op (see module doc)."""

        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size = tuple(size)

        def call(self, x):
            new_hw = tf.shape(x)[1:3] * tf.constant(self.size, dtype=tf.int32)
            return tf.raw_ops.ResizeNearestNeighbor(
                images=x, size=new_hw, align_corners=False, half_pixel_centers=False
            )

        def compute_output_shape(self, shape):
            h, w = (None if d is None else d * s for d, s in zip(shape[1:3], self.size))
            return (shape[0], h, w, shape[3])

    def swap(layer):
        if swap_upsampling and isinstance(layer, keras.layers.UpSampling2D):
            if layer.interpolation != "nearest" or layer.data_format != "channels_last":
                raise ConversionError(
                    f"layer {layer.name!r}: only nearest, channels_last UpSampling2D is supported, "
                    f"got interpolation={layer.interpolation!r}, data_format={layer.data_format!r}"
                )
            return NearestUpsample(layer.size, name=layer.name)
        config = layer.get_config()
        if layer.name == HEAD_LAYER:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=swap)
    twin.set_weights(model.get_weights())
    return twin


def convert_keras(model, *, head: str, layout: str, opset: int, dynamic_size: bool,
                  input_dtype: str = "float32", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
    """Convert the seed's Keras model to an ONNX ``ModelProto`` with tf2onnx.

    Args:
        model: the Keras VGG19-UNet (softmax head), NHWC.
        head: ``softmax`` | ``logits`` | ``argmax`` (uint8 mask ``(N, H, W)``).
        layout: ``nhwc`` | ``nchw`` for the input, and for the output of the
            softmax/logits heads.
        opset: ONNX opset, ``MIN_OPSET`` to ``MAX_OPSET``.
        dynamic_size: export H and W as symbolic dimensions.
        input_dtype: ``float32`` (normalized input) or ``uint8``: raw RGB
            pixels; the cast and ``(x/255 - mean)/std`` then run inside the
            graph (on the GPU), so callers copy a quarter of the bytes and
            do no arithmetic on the host.
        mean, std: the normalization, used only for a uint8 input.

    Returns:
        The raw tf2onnx graph (input ``input``; output named by the head),
        still holding tf2onnx's Resize size chains: see ``graph.clean``.
    """
    import tensorflow as tf
    import tf2onnx

    twin = _twin(model)
    _, height, width, channels = model.input_shape
    shape = [None, None if dynamic_size else height, None if dynamic_size else width, channels]
    spec = tf.TensorSpec(shape, tf.uint8 if input_dtype == "uint8" else tf.float32, name=INPUT_NAME)
    # (x/255 - mean)/std == x * scale + shift: one Mul and one Add in the graph, with the constants
    # the runtime's to_model_input uses for float32-input models (bit-identical inputs either way).
    scale, shift = normalization(mean, std)

    @tf.function(input_signature=[spec])
    def forward(x):
        if input_dtype == "uint8":
            # Constants made inside the function: made outside, tf2onnx would
            # turn them into extra graph inputs (captures).
            x = tf.cast(x, tf.float32) * tf.constant(scale) + tf.constant(shift)
        logits = twin(x, training=False)
        if head == "softmax":
            return tf.nn.softmax(logits, axis=-1)
        if head == "argmax":
            # int64 is ONNX ArgMax's own output type: one Cast to uint8, not two.
            return tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.uint8)
        return logits

    # tf2onnx only knows tensor names, and ignores an unknown one silently
    # (ANCHORS): "input:0" is what the signature above produces.
    nchw = [f"{INPUT_NAME}:0"] if layout == "nchw" else None
    # A mask has no channel axis, so only probabilities/logits can be NCHW.
    out_nchw = None
    if layout == "nchw" and head != "argmax":
        out_nchw = [forward.get_concrete_function().outputs[0].name]
    log.info("convert: tf2onnx %s, opset %d, head %s, layout %s", tf2onnx.__version__, opset, head, layout)
    try:
        proto, _ = tf2onnx.convert.from_function(
            forward, input_signature=[spec], opset=opset, inputs_as_nchw=nchw, outputs_as_nchw=out_nchw
        )
    except Exception as exc:  # tf2onnx raises bare Exceptions/ValueErrors
        raise ConversionError(f"tf2onnx failed to convert the model at opset {opset}: {exc}") from exc
    return proto
