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

Why the weights are *inputs* of the converted function, not constants:
tf2onnx freezes a function's variables into graph constants, and every one
of its passes then carries the 121 MB of weights along: TensorFlow's graph
import and grappler, and tf2onnx's optimizer loop, which copies the whole
graph before each of its ~36 optimizer runs (``tf2onnx/optimizer/__init__.py``,
``copy.deepcopy(graph)`` with ``catch_errors``) and re-serializes every
node after each (``GraphOptimizerBase.optimize`` -> ``update_proto``). That
took ~28 s and ~8 GiB on a 2-core CPU for the 512x512 model. Converted as
``f(image, *weights)`` through Keras' ``stateless_call``, the function has
no large constant, tf2onnx converts it in about a second (the optimizer's
safety copies are switched off too: :func:`_optimizer_errors_raise`), and
:func:`unet_export.graph.attach_weights` then turns the weight inputs into
initializers (evaluating the Transposes/Reshapes tf2onnx put on them once).
The graph is node for node the one the frozen conversion gives; the
verification against the untouched Keras model checks every weight.

``tf2onnx.convert.from_function`` is used rather than ``from_keras``: with
Keras 3 both wrap the model in a ``tf.function``, but ``from_function`` lets
us name the inputs and control the signature (static or dynamic H/W).
"""

from __future__ import annotations

import contextlib
import logging
import os

from unet_runtime.images import normalization
from unet_runtime.model_info import INPUT_NAME

from .errors import ConversionError
from .network import output_layer

__all__ = ["convert_keras", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET"]

log = logging.getLogger(__name__)

#: Resize with ``coordinate_transformation_mode=asymmetric`` and ``nearest_mode``
#: needs opset 11; ArgMax/Softmax on an explicit axis behave as here from 13.
MIN_OPSET = 13
#: The newest opset tf2onnx 1.17 emits (it knows opsets up to 18).
MAX_OPSET = 18
#: 17 is supported by every ONNX Runtime since 1.11 and by TensorRT 8.6+,
#: and nothing in this network needs a newer op.
DEFAULT_OPSET = 17

#: Graph-input names of the weights during conversion (``w0``, ``w1``, ...); gone once they are attached.
_WEIGHT_INPUT = "w{}"


def _twin(model):
    """Clone ``model``'s wiring with a linear head and nearest-resize upsampling (fresh variables, same paths).

    The head is the output layer: the reference model's 1x1 softmax conv, or
    the softmax Activation network.py puts on another network's logits.
    """
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
            h, w = (
                None if d is None else d * s for d, s in zip(shape[1:3], self.size, strict=True)
            )
            return (shape[0], h, w, shape[3])

    head = output_layer(model).name

    def swap(layer):
        if isinstance(layer, keras.layers.UpSampling2D):
            if layer.data_format != "channels_last":
                raise ConversionError(
                    f"layer {layer.name!r}: only channels_last UpSampling2D is supported, "
                    f"got data_format={layer.data_format!r}"
                )
            # bilinear upsampling is one Resize (half-pixel) as Keras lowers it
            if layer.interpolation == "nearest":
                return NearestUpsample(layer.size, name=layer.name)
        config = layer.get_config()
        if layer.name == head:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=swap)


def _weights_by_twin_order(model, twin) -> tuple[list, list]:
    """``model``'s weight values in the order of ``twin``'s (trainable, non-trainable) variables, matched by path."""
    values = {v.path: v for v in model.variables}
    if len(values) != len(model.variables):
        raise ConversionError(
            "the Keras model has two variables with the same path; give every layer a unique name"
        )

    def pick(variables):
        try:
            return [values[v.path].numpy() for v in variables]
        except KeyError as exc:  # cannot happen for a clone; a guard against a Keras change
            raise ConversionError(
                f"variable {exc.args[0]!r} of the converted twin has no counterpart in the model"
            ) from exc

    return pick(twin.trainable_variables), pick(twin.non_trainable_variables)


@contextlib.contextmanager
def _optimizer_errors_raise():
    """Run tf2onnx's graph optimizers without their per-pass safety copy.

    With errors caught (tf2onnx's default), ``optimizer.optimize_graph``
    deep-copies the whole graph before each of its ~20 passes, every
    iteration, so that a failing pass can be skipped: half of the conversion
    time of this network (tf2onnx 1.17, ``tf2onnx/optimizer/__init__.py``).
    tf2onnx's own switch, the ``TF2ONNX_CATCH_ERRORS`` environment variable
    (``tf2onnx/constants.py``), turns that off; a pass that fails then fails
    the conversion, which is what an export that must be reproducible wants
    rather than a graph that silently missed a pass. tf2onnx 1.17 tests only
    that the variable is set (``convert.py``, ``_convert_common``: it
    compares the variable's name, not its value, with "TRUE"), so it is set
    for the one call and removed again.
    """
    key, old = "TF2ONNX_CATCH_ERRORS", os.environ.get("TF2ONNX_CATCH_ERRORS")
    os.environ[key] = "FALSE"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def convert_keras(model, config):
    """Convert the reference Keras model to an ONNX ``ModelProto`` with tf2onnx, weights included.

    Args:
        model: the Keras VGG19-UNet (softmax head), NHWC.
        config: the :class:`~unet_export.config.ExportConfig` (resolved), of
            which this reads ``head`` (``softmax`` | ``logits`` | ``argmax``:
            a uint8 mask ``(N, H, W)``), ``layout`` (``nhwc`` | ``nchw``, for
            the input and the softmax/logits outputs), ``opset``,
            ``dynamic_size`` (H and W symbolic), ``input_dtype``
            (``float32``: normalized input; ``uint8``: raw RGB pixels, the
            cast and ``(x/255 - mean)/std`` then run inside the graph, so
            callers copy a quarter of the bytes) and ``mean``/``std``.

    The weights are inputs of the converted function (Keras' ``stateless_call``
    on a twin of the model), never frozen constants: TensorFlow's graph
    import, grappler and tf2onnx's optimizers then never copy 121 MB of them.

    Returns:
        The tf2onnx graph with the weights attached as initializers (input
        ``input``), still holding tf2onnx's Resize size chains: see
        ``graph.clean``.
    """
    from .graph import attach_weights

    twin = _twin(model)
    trainable, frozen = _weights_by_twin_order(model, twin)
    forward, specs = _forward(model, twin, trainable, frozen, config)
    proto = _run_tf2onnx(forward, specs, config)
    paths = [v.path for v in twin.trainable_variables + twin.non_trainable_variables]
    weights = {_WEIGHT_INPUT.format(i): w for i, w in enumerate(trainable + frozen)}
    names = {_WEIGHT_INPUT.format(i): path for i, path in enumerate(paths)}
    return attach_weights(proto, weights, names)


def _forward(model, twin, trainable: list, frozen: list, config):
    """The ``tf.function`` tf2onnx converts: ``f(image, *weights)``, the head applied; and its input specs."""
    import tensorflow as tf

    c = config
    _, height, width, channels = model.input_shape
    shape = [None, None if c.dynamic_size else height, None if c.dynamic_size else width, channels]
    dtype = tf.uint8 if c.input_dtype == "uint8" else tf.float32
    specs = [tf.TensorSpec(shape, dtype, name=INPUT_NAME)] + [
        tf.TensorSpec(w.shape, tf.as_dtype(w.dtype), name=_WEIGHT_INPUT.format(i))
        for i, w in enumerate(trainable + frozen)
    ]
    # (x/255 - mean)/std == x * scale + shift: one Mul and one Add in the graph, with the constants
    # the runtime's to_model_input uses for float32-input models (bit-identical inputs either way).
    scale, shift = normalization(c.mean, c.std)
    n_trainable = len(trainable)

    @tf.function(input_signature=specs)
    def forward(x, *weights):
        if c.input_dtype == "uint8":
            # Constants made inside the function: made outside, tf2onnx would
            # turn them into extra graph inputs (captures).
            x = tf.cast(x, tf.float32) * tf.constant(scale) + tf.constant(shift)
        logits, _ = twin.stateless_call(
            list(weights[:n_trainable]), list(weights[n_trainable:]), x, training=False
        )
        if c.head == "softmax":
            return tf.nn.softmax(logits, axis=-1)
        if c.head == "argmax":
            # int64 is ONNX ArgMax's own output type: one Cast to uint8, not two.
            return tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int64), tf.uint8)
        return logits

    return forward, specs


def _run_tf2onnx(forward, specs: list, config):
    """tf2onnx on ``forward``, NCHW where the layout says; its errors as ConversionError."""
    import tf2onnx

    c = config
    # tf2onnx only knows tensor names and ignores an unknown one silently, leaving the graph NHWC;
    # "input:0" is what the signature produces (the layout is tested).
    nchw = [f"{INPUT_NAME}:0"] if c.layout == "nchw" else None
    # A mask has no channel axis, so only probabilities/logits can be NCHW.
    out_nchw = None
    if c.layout == "nchw" and c.head != "argmax":
        out_nchw = [forward.get_concrete_function().outputs[0].name]
    log.info(
        "convert: tf2onnx %s, opset %d, head %s, layout %s",
        tf2onnx.__version__,
        c.opset,
        c.head,
        c.layout,
    )
    try:
        with _optimizer_errors_raise():
            proto, _ = tf2onnx.convert.from_function(
                forward,
                input_signature=specs,
                opset=c.opset,
                inputs_as_nchw=nchw,
                outputs_as_nchw=out_nchw,
            )
    except Exception as exc:  # tf2onnx raises bare Exceptions/ValueErrors
        raise ConversionError(
            f"tf2onnx failed to convert the model at opset {c.opset}: {exc}"
        ) from exc
    _erfc_as_erf(proto)
    _refuse_unconverted(proto, c.opset)
    return proto


def _erfc_as_erf(proto) -> None:
    """``Erfc(x)`` -> ``1 - Erf(x)``: ONNX has no Erfc, and tf2onnx 1.17 passes TensorFlow's through.

    Keras 3's exact GELU (``activation="gelu"``, as SegFormer and ViTs use)
    is ``0.5 x erfc(-x / sqrt 2)`` on TensorFlow. ``1 - erf`` loses relative
    precision only where erfc is tiny, i.e. where GELU is ~0 anyway; the
    verification against Keras holds the result to the same bounds.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    nodes = [n for n in proto.graph.node if n.op_type == "Erfc" and n.domain in ("", "ai.onnx")]
    if not nodes:
        return
    one = "erfc_as_erf/one"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    for node in nodes:
        erf = f"{node.name or node.output[0]}/erf"
        replacement = [
            helper.make_node("Erf", [node.input[0]], [erf], name=erf),
            helper.make_node("Sub", [one, erf], [node.output[0]], name=f"{erf}/one_minus"),
        ]
        at = list(proto.graph.node).index(node)
        proto.graph.node.remove(node)
        for i, new in enumerate(replacement):
            proto.graph.node.insert(at + i, new)


def _refuse_unconverted(proto, opset: int) -> None:
    """tf2onnx keeps a TensorFlow op it has no handler for as a node of that name: name them, and stop."""
    import onnx

    unknown = [
        n
        for n in proto.graph.node
        if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, n.domain)
    ]
    if unknown:
        import tf2onnx

        ops = sorted({n.op_type for n in unknown})
        where = ", ".join(repr(n.name) for n in unknown[:3])
        raise ConversionError(
            f"tf2onnx {tf2onnx.__version__} cannot convert the TensorFlow op(s) {', '.join(ops)} "
            f"(node {where}) at opset {opset}: there is no ONNX equivalent it knows. Replace the "
            "layer that uses it with one built from supported ops (tf2onnx's support_status.md lists them)"
        )
