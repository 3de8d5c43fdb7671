"""Your own network: any Keras model that maps images to per-pixel class scores.

The export's later steps do not depend on the architecture: tf2onnx converts
whatever the model computes, the gates compare it with Keras, and the
runtime reads the metadata. What they need is a model of one shape:

    image (N, H, W, 3) float32  ->  logits (N, H, W, C)  ->  softmax

:func:`prepare_network` checks that a user's model can be put in that shape
(one image input, one output of per-pixel scores, logits or softmax) and
builds it as a new functional model over the user's own layers and weights:

* a model ending in softmax (a ``Softmax`` or ``Activation("softmax")``
  layer, or a layer with ``activation="softmax"``) has its logits taken
  from before the softmax (for a layer with the activation built in, a copy
  of that layer with a linear activation and the same weights);
* a model ending in a linear layer already outputs logits;
* scores at a lower resolution than the image (``(N, h, w, C)``, e.g.
  DeepLab's 1/4 or SegFormer's 1/4) are resized to the input size,
  bilinear on the logits, in the graph (a ``ResizeToInput`` layer);
* a ``softmax`` head is then one ``Activation`` named :data:`SOFTMAX_LAYER`,
  whose input the converter and the verifier read as the logits.

Anything else (several inputs, a non-image input, outputs that are not
per-pixel scores, another final activation, a subclassed model whose
``call`` cannot be traced, a file with custom layers Keras cannot find) is
refused here with what to change, before any slow step.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "Network",
    "load_model_file",
    "is_reference_model",
    "prepare_network",
    "output_layer",
    "SOFTMAX_LAYER",
    "RESIZE_LAYER",
    "SIZE_MULTIPLE",
]

#: The softmax the export puts on a user's logits (and the verifier reads the logits from).
SOFTMAX_LAYER = "unet_onnx_softmax"
#: The bilinear resize of lower-resolution logits to the input size.
RESIZE_LAYER = "unet_onnx_resize"
#: What a size-agnostic (``--dynamic-size``) export of a user's network records as the size its
#: H and W must be multiples of: 32 is the total stride of the common encoders (ResNet,
#: MobileNet, EfficientNet, SegFormer's MiT); the verification runs at 96x64 and 64x96.
SIZE_MULTIPLE = 32
#: Layers of the reference VGG19-UNet (model.py) whose names no other network is likely to have.
_REFERENCE_NAMES = frozenset({"conv1-1", "conv5-4", "pool4"})


@dataclass
class Network:
    """A user's network in the form the export converts, and what was found out about it."""

    #: image -> ... -> logits -> Activation("softmax", name=SOFTMAX_LAYER), on the user's layers
    model: Any
    name: str
    #: (H, W) the model takes, or None for a model built with H and W unknown
    input_size: tuple[int, int] | None
    num_classes: int
    #: what was found (classes, what the model ended in, a resize of its scores): the build's log line
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the build step's log."""
        return "; ".join([f"network {self.name!r}", *self.notes])


def is_reference_model(model) -> bool:
    """Whether ``model`` is the reference VGG19-UNet (its layer names), whose weights are copied instead."""
    names = {getattr(layer, "name", None) for layer in getattr(model, "layers", ())}
    return _REFERENCE_NAMES <= names


def load_model_file(path: str, custom_objects: str | None = None):
    """Load a Keras 3 ``.keras`` model file; errors say what is wrong and what to do.

    Args:
        path: the ``.keras`` archive (``model.save("model.keras")``).
        custom_objects: a Python module to import first (``my_pkg.layers``),
            whose ``@keras.saving.register_keras_serializable`` classes Keras
            then finds; a ``custom_objects`` dict in it is passed on too.

    Raises:
        ConfigError: the file is missing, not a ``.keras`` archive, or uses a
            class Keras cannot find.
    """
    import keras

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--model {path!r} does not exist; give the path of a saved .keras file")
    if file.suffix != ".keras":
        raise ConfigError(
            f"--model {path!r} is not a .keras file; save the model with model.save('model.keras') "
            "(a weights-only or legacy .h5 file does not hold the architecture)"
        )
    objects = {}
    if custom_objects:
        try:
            module = importlib.import_module(custom_objects)
        except ImportError as exc:
            raise ConfigError(
                f"--custom-objects {custom_objects!r} cannot be imported ({exc}); give the module "
                "that defines the model's custom layers, importable from here (check PYTHONPATH)"
            ) from exc
        objects = dict(getattr(module, "custom_objects", {}) or {})
    try:
        return keras.saving.load_model(file, custom_objects=objects or None, compile=False)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if missing:
            name = missing.group(1)
            where = re.search(rf"'module': '([^']+)', 'class_name': '{re.escape(name)}'", text)
            origin = f" (saved from module {where.group(1)!r})" if where else ""
            raise ConfigError(
                f"--model {path!r} uses {name!r}{origin}, which Keras cannot find. Pass "
                "--custom-objects MODULE, a module that defines it with "
                "@keras.saving.register_keras_serializable() (or a custom_objects dict)"
            ) from exc
        raise ConfigError(f"--model {path!r} could not be loaded by Keras: {text}") from exc
    except Exception as exc:  # zip/h5 errors of a damaged file
        raise ConfigError(
            f"--model {path!r} could not be loaded by Keras ({type(exc).__name__}: {exc}); "
            "is it a complete .keras file?"
        ) from exc


def output_layer(model):
    """The layer that produces the model's (single) output."""
    return model.outputs[0]._keras_history.operation


def _traced(model, input_size: tuple[int, int] | None):
    """``model`` as a functional graph: a subclassed model is called once on a symbolic input."""
    import keras

    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        return model
    h, w = input_size or (None, None)
    try:
        image = keras.Input((h, w, 3), name="image")
        return keras.Model(image, model(image), name=model.name)
    except Exception as exc:
        raise ConfigError(
            f"model {model.name!r} ({type(model).__name__}) is subclassed and its call() cannot be "
            f"traced on a symbolic image (N, {h}, {w}, 3): {type(exc).__name__}: {exc}. Build it with "
            "the functional API (keras.Model(inputs, outputs)), or make call() use keras.ops only"
        ) from exc


def _check_io(model) -> tuple[int | None, int | None]:
    """One float image input ``(N, H, W, 3)``, one rank-4 output; returns the input's (H, W)."""
    name = model.name
    if len(model.inputs) != 1:
        names = ", ".join(str(getattr(t, "name", "?")) for t in model.inputs)
        raise ConfigError(
            f"model {name!r} has {len(model.inputs)} inputs ({names}); the export takes one image input "
            "(N, H, W, 3): build a model of the image alone"
        )
    if len(model.outputs) != 1:
        raise ConfigError(
            f"model {name!r} has {len(model.outputs)} outputs; the export takes one tensor of per-pixel "
            "class scores: export keras.Model(model.input, model.outputs[0]) (drop auxiliary heads)"
        )
    tensor = model.inputs[0]
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ConfigError(
            f"model {name!r} takes {shape}, not an image batch (N, H, W, 3) (channels last, RGB); "
            "the export feeds normalized RGB images"
        )
    if "float" not in str(tensor.dtype):
        raise ConfigError(
            f"model {name!r} takes {tensor.dtype} input; the export feeds float32 normalized pixels "
            "(use --input-dtype uint8 to get the cast and normalization inside the graph instead)"
        )
    out = tuple(model.outputs[0].shape)
    if len(out) != 4:
        raise ConfigError(
            f"model {name!r} outputs {out}, not per-pixel class scores (N, H, W, C): an image "
            "classifier or a flattened output cannot be exported as segmentation"
        )
    return shape[1], shape[2]


def _final_activation(layer) -> str:
    """``softmax``, ``linear`` or the name of what the output layer applies last."""
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax" if layer.axis in (-1, 3, [-1], [3]) else f"softmax over axis {layer.axis}"
    if isinstance(layer, keras.layers.Activation) or hasattr(layer, "activation"):
        act = layer.get_config().get("activation", "linear")
        return act if isinstance(act, str) else getattr(act, "__name__", str(act))
    return "linear"


def _logits(model, layer):
    """The tensor of logits in ``model``'s graph, and what the model ended in."""
    import keras

    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    if isinstance(layer, pooling):
        raise ConfigError(
            f"model {model.name!r} ends in a pooling layer {layer.name!r}: a feature extractor, not "
            "per-pixel class scores; put a classifier on it (e.g. a 1x1 Conv2D with one filter per class)"
        )
    act = _final_activation(layer)
    if act == "linear":
        return model.outputs[0], "logits"
    if act != "softmax":
        raise ConfigError(
            f"model {model.name!r} ends in {act!r} (layer {layer.name!r}); the export needs per-pixel "
            "class scores: logits (a linear last layer) or softmax over the classes. For one-class "
            "sigmoid masks, train two classes with softmax"
        )
    if isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
        return layer.input, "softmax"
    # A layer with the softmax built in: the same layer, linear, on the same input and weights.
    config = {**layer.get_config(), "activation": "linear", "name": f"{layer.name}_logits"}
    linear = layer.__class__.from_config(config)
    logits = linear(layer.input)
    linear.set_weights(layer.get_weights())
    return logits, "softmax"


def prepare_network(model, input_size: tuple[int, int] | None, dynamic: bool) -> Network:
    """Check a user's Keras model and build the form the export converts (module docstring).

    Args:
        model: a ``keras.Model`` (functional, Sequential, or a traceable subclass).
        input_size: the size asked for (``--input-size``), or None for the model's own.
        dynamic: ``--dynamic-size``: the model must take any H and W.

    Raises:
        ConfigError: what the model must be and is not, and what to do.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"keras_model is a {type(model).__name__}, not a keras.Model; pass the model itself "
            "(or save it with model.save('model.keras') and pass --model)"
        )
    model = _traced(model, None if dynamic else input_size)
    own_h, own_w = _check_io(model)
    fixed = own_h is not None and own_w is not None
    name = model.name
    if dynamic and (own_h is not None or own_w is not None):
        raise ConfigError(
            f"--dynamic-size: model {name!r} takes a fixed {own_h}x{own_w} input; rebuild it on "
            "keras.Input((None, None, 3)) to export it size-agnostic, or drop --dynamic-size"
        )
    if fixed and input_size is not None and tuple(input_size) != (own_h, own_w):
        raise ConfigError(
            f"--input-size {input_size[0]} {input_size[1]}: model {name!r} takes {own_h}x{own_w}; "
            "drop --input-size (the model's size is used), or rebuild the model on "
            "keras.Input((None, None, 3)) to export it at other sizes"
        )
    size: tuple[int, int] | None = None
    if own_h is not None and own_w is not None:
        size = (own_h, own_w)
    elif not dynamic:
        h0, w0 = input_size or (512, 512)
        size = (int(h0), int(w0))
    probe: tuple[int, int] = size or (2 * SIZE_MULTIPLE, 3 * SIZE_MULTIPLE)
    try:
        out = tuple(model.compute_output_shape((1, *probe, 3)))
    except Exception as exc:
        raise ConfigError(
            f"model {name!r} cannot run on a {probe[0]}x{probe[1]} image: {type(exc).__name__}: {exc}"
        ) from exc
    classes = out[-1]
    if not isinstance(classes, int) or classes < 2:
        raise ConfigError(
            f"model {name!r} outputs {classes} score channel(s) per pixel; the export needs one per "
            "class, at least 2 (for a binary mask: background and foreground, with softmax)"
        )
    h, w = out[1], out[2]
    if not (isinstance(h, int) and isinstance(w, int)) or h > probe[0] or w > probe[1]:
        raise ConfigError(
            f"model {name!r} maps a {probe[0]}x{probe[1]} image to {h}x{w} scores; per-pixel scores "
            "are at the image's size or a lower resolution"
        )
    logits, scores = _logits(model, output_layer(model))
    notes = [f"{classes} classes", f"its {scores} taken as the scores"]
    if (h, w) != tuple(probe):
        logits = _resize_layer_class()(name=RESIZE_LAYER)([logits, model.inputs[0]])
        notes.append(
            f"its {h}x{w} scores for a {probe[0]}x{probe[1]} image resized bilinear to the input size "
            "in the graph"
        )
    probs = keras.layers.Activation("softmax", name=SOFTMAX_LAYER)(logits)
    prepared = keras.Model(model.inputs, probs, name=name)
    return Network(
        model=prepared,
        name=name,
        input_size=size,
        num_classes=classes,
        notes=notes,
    )


@functools.cache
def _resize_layer_class():
    """The :class:`ResizeToInput` layer class (made once: it needs Keras and TensorFlow)."""
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="unet_onnx")
    class ResizeToInput(keras.layers.Layer):
        """Bilinear resize of ``x`` to the height and width of ``reference`` (any size, traced once)."""

        def call(self, inputs):
            x, reference = inputs
            # tf.image.resize (half-pixel centres, no antialias): what Keras' own bilinear
            # UpSampling2D and Resizing compute, and one ONNX Resize after tf2onnx.
            return tf.image.resize(x, tf.shape(reference)[1:3], method="bilinear")

        def compute_output_shape(self, shapes):
            x, reference = shapes
            return (x[0], reference[1], reference[2], x[3])

    return ResizeToInput
