"""Frames of any size in, masks at their size out: the runtime's resizes moved into the graph.

``export-unet --resize-in-graph`` wraps the exported network (any precision,
uint8 NHWC input) in the pre- and post-processing the runtime does on the
host for a fixed-size model, so that on a GPU a camera frame goes up as its
own bytes and only a one-byte-per-pixel mask comes back:

    image (N, H, W, 3) uint8
      -> Cast float -> Transpose NCHW -> Resize linear, half_pixel, to the network size
      -> Round -> Clip 0..255 -> Transpose NHWC -> Cast uint8       (the network's input, as the host makes it)
      -> the network
      -> mask (N, h, w) -> Resize nearest, half_pixel + round_prefer_ceil, to (N, H, W)   [argmax head]

The bilinear step is the host path's sampling exactly
(``unet_runtime.images.resize_bilinear``: half-pixel centres, edge clamping,
no antialiasing, rounded back to uint8 as PIL and OpenCV do for uint8
images), so the network sees the same pixels either way. The nearest step
picks source row ``floor((i + 0.5) * h / H)``, the host's
``resize_nearest``: ONNX's ``half_pixel`` gives ``(i + 0.5) * h / H - 0.5``
and ``round_prefer_ceil`` of that is the floor above. A softmax or logits
head keeps its scores at the network's size (21 channels resized to a 4K
frame would be 700 MB of float32 in the graph): the runtime resizes them on
the host as before, and takes masks at the frame's size from the argmax head.
"""

from __future__ import annotations

import numpy as np

from .errors import ConversionError

__all__ = ["resize_in_graph", "NETWORK_INPUT"]

#: The tensor between the in-graph resize and the network: the network's uint8 NHWC input.
NETWORK_INPUT = "network_input"


def resize_in_graph(model, height: int, width: int, *, head: str):
    """Wrap ``model`` (uint8 NHWC input named as its graph input) with the in-graph resizes (module doc).

    Returns the model (modified in place). The graph input keeps its name
    and becomes ``(N, H, W, 3)`` with symbolic ``H`` and ``W``; an argmax
    head's output becomes ``(N, H, W)``.

    Raises:
        ConversionError: the model's input is not uint8 NHWC with 3 channels.
    """
    from onnx import TensorProto

    g = model.graph
    inp = g.input[0]
    t = inp.type.tensor_type
    dims = t.shape.dim
    if t.elem_type != TensorProto.UINT8 or len(dims) != 4 or dims[3].dim_value != 3:
        raise ConversionError(
            "--resize-in-graph needs the network's uint8 NHWC input; export with --input-dtype uint8 "
            "--layout nhwc"
        )
    name = inp.name
    for node in g.node:  # the network now reads the resized image
        node.input[:] = [NETWORK_INPUT if i == name else i for i in node.input]
    const = _constants(g)
    post = []
    if head == "argmax":
        (out,) = g.output
        net_mask = _P + "network_mask"
        for node in g.node:
            node.output[:] = [net_mask if o == out.name else o for o in node.output]
        post = _mask_back(name, net_mask, out.name, const)
        _symbolic_hw(out.type.tensor_type.shape.dim)
    nodes = _frame_to_network(name, height, width, const) + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    _symbolic_hw(dims)
    # Shapes inferred for the old fixed-size input no longer hold for the graph's new input.
    del g.value_info[:]
    return model


_P = "resize_in_graph/"


def _constants(g):
    """A function adding a named constant initializer to ``g``; returns its name."""
    from onnx import numpy_helper

    def const(suffix: str, value) -> str:
        tensor = numpy_helper.from_array(np.asarray(value), _P + suffix)
        g.initializer.append(tensor)
        return tensor.name

    return const


def _symbolic_hw(dims) -> None:
    """Dimensions 1 and 2 (H, W) of a shape become symbolic ``height`` and ``width``."""
    for i, label in ((1, "height"), (2, "width")):
        dims[i].ClearField("dim_value")
        dims[i].dim_param = label


def _frame_to_network(frame: str, height: int, width: int, const) -> list:
    """uint8 NHWC frame -> bilinear (half_pixel) to the network size, rounded and clipped -> uint8 NHWC."""
    from onnx import TensorProto, helper

    p = _P
    return [
        helper.make_node("Cast", [frame], [p + "float"], name=p + "cast", to=TensorProto.FLOAT),
        helper.make_node(
            "Transpose", [p + "float"], [p + "nchw"], name=p + "to_nchw", perm=[0, 3, 1, 2]
        ),
        helper.make_node("Shape", [p + "nchw"], [p + "shape"], name=p + "shape"),
        helper.make_node(
            "Slice",
            [p + "shape", const("zero", [0]), const("two", [2])],
            [p + "n_c"],
            name=p + "n_c",
        ),
        helper.make_node(
            "Concat",
            [p + "n_c", const("network_hw", np.array([height, width], np.int64))],
            [p + "sizes"],
            name=p + "sizes",
            axis=0,
        ),
        helper.make_node(
            "Resize",
            [p + "nchw", "", "", p + "sizes"],
            [p + "resized"],
            name=p + "bilinear",
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Round", [p + "resized"], [p + "rounded"], name=p + "round"),
        helper.make_node(
            "Clip",
            [p + "rounded", const("lo", np.float32(0)), const("hi", np.float32(255))],
            [p + "clipped"],
            name=p + "clip",
        ),
        helper.make_node(
            "Transpose", [p + "clipped"], [p + "nhwc"], name=p + "to_nhwc", perm=[0, 2, 3, 1]
        ),
        helper.make_node(
            "Cast", [p + "nhwc"], [NETWORK_INPUT], name=p + "to_uint8", to=TensorProto.UINT8
        ),
    ]


def _mask_back(frame: str, net_mask: str, mask: str, const) -> list:
    """The network's mask -> nearest (half_pixel, round_prefer_ceil) back to the frame's own size."""
    from onnx import helper

    p = _P
    return [
        helper.make_node("Shape", [frame], [p + "in_shape"], name=p + "in_shape"),
        helper.make_node(
            "Slice",
            [p + "in_shape", const("one", [1]), const("three", [3])],
            [p + "in_hw"],
            name=p + "in_hw",
        ),
        helper.make_node(
            "Slice",
            [p + "in_shape", const("zero_b", [0]), const("one_b", [1])],
            [p + "n"],
            name=p + "n",
        ),
        helper.make_node(
            "Concat",
            [p + "n", const("channel", np.array([1], np.int64)), p + "in_hw"],
            [p + "mask_sizes"],
            name=p + "mask_sizes",
            axis=0,
        ),
        helper.make_node(
            "Unsqueeze", [net_mask, const("axis1", [1])], [p + "mask4"], name=p + "mask4"
        ),
        helper.make_node(
            "Resize",
            [p + "mask4", "", "", p + "mask_sizes"],
            [p + "mask_resized"],
            name=p + "nearest",
            mode="nearest",
            coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_ceil",
        ),
        helper.make_node(
            "Squeeze", [p + "mask_resized", const("axis1_b", [1])], [mask], name=p + "mask"
        ),
    ]
