"""Ordered clean-up passes on the ONNX graph, each logged with op counts.

tf2onnx's graph for this network is already NCHW inside (its transpose
optimizer cancels the Conv transposes) and constant-folded, except for one
thing: every ``Resize`` gets its output *size* from a Shape/Slice/Gather/
Cast/Mul/Concat chain, because the batch dimension is dynamic. Nearest 2x
upsampling is a fixed *scale*, so :func:`resize_to_scales` gives each
``Resize`` a constant ``scales`` input and the chain becomes dead code,
which onnxslim (a maintained optimizer) removes along with anything else
foldable. Hand-written surgery is limited to that one pass.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable, Sequence

import numpy as np

from .errors import ConversionError

__all__ = ["op_histogram", "node_attr", "clean", "check", "FORBIDDEN_OPS"]

log = logging.getLogger(__name__)

#: Ops that must not survive clean-up: they are the remains of shape
#: arithmetic or of tf2onnx's Tile-based upsampling.
FORBIDDEN_OPS = frozenset({"Shape", "Gather", "Tile", "Reshape", "Expand", "Slice", "ConstantOfShape", "Range"})


def op_histogram(model) -> dict[str, int]:
    """Count nodes per op type (main graph), sorted by count then name."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def node_attr(node, name: str, default=None):
    """The value of attribute ``name`` of an ONNX node, or ``default`` when the node does not set it."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def resize_to_scales(model, factors: Sequence[tuple[int, int]]):
    """Replace each Resize's computed ``sizes`` with constant NCHW ``scales``.

    Args:
        model: the tf2onnx graph; its Resize nodes run on NCHW data (tf2onnx's
            Resize handler always transposes to NCHW around it).
        factors: (fh, fw) of each UpSampling2D, in network order (the UNet's
            upsamplings form a chain, so graph order equals network order).
    """
    from onnx import numpy_helper

    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    if len(resizes) != len(factors):
        raise ConversionError(
            f"expected {len(factors)} Resize nodes (one per UpSampling2D), tf2onnx produced {len(resizes)}"
        )
    for i, (node, (fh, fw)) in enumerate(zip(resizes, factors)):
        name = f"upsample_scales_{i}"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([1.0, 1.0, fh, fw], dtype=np.float32), name)
        )
        # Resize(X, roi, scales, sizes): an empty name leaves roi/sizes out.
        data = node.input[0]
        del node.input[:]
        node.input.extend([data, "", name])
    return model


def rename_io(model, input_name: str, output_name: str):
    """Give the single input and output stable, documented names."""
    renames = {model.graph.input[0].name: input_name, model.graph.output[0].name: output_name}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    model.graph.input[0].name = input_name
    model.graph.output[0].name = output_name
    return model


def slim(model):
    """Dead-code elimination and constant folding with onnxslim."""
    import onnxslim

    # onnxslim's defaults (its pattern fusions included): this graph has
    # nothing they fuse, and the tests pin the exact op histogram, so a new
    # onnxslim that started rewriting ops would fail them, not ship.
    return onnxslim.slim(model)


def check(model) -> None:
    """``onnx.checker`` (full check, which includes strict shape inference).

    Raises:
        ConversionError: with the checker's message.
    """
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the ONNX graph fails onnx.checker: {exc}") from exc


def _assert_clean(model) -> None:
    left = {op: n for op, n in op_histogram(model).items() if op in FORBIDDEN_OPS}
    if left:
        raise ConversionError(f"clean-up left shape-arithmetic ops in the graph: {left}")


def clean(model, *, factors: Sequence[tuple[int, int]], input_name: str, output_name: str):
    """Run the clean-up passes in order and log the op histogram around each.

    Returns:
        ``(model, steps)`` where ``steps`` is a list of
        ``{"step": name, "ops": histogram}`` for the report.
    """
    passes: list[tuple[str, Callable]] = [
        ("resize_to_scales", lambda m: resize_to_scales(m, factors)),
        ("rename_io", lambda m: rename_io(m, input_name, output_name)),
        ("onnxslim", slim),
    ]
    steps = [{"step": "tf2onnx", "ops": op_histogram(model)}]
    log.info("graph: tf2onnx %s", steps[0]["ops"])
    for name, run in passes:
        model = run(model)
        steps.append({"step": name, "ops": op_histogram(model)})
        log.info("graph: after %s: %d nodes", name, len(model.graph.node))
    _assert_clean(model)
    check(model)
    log.info("graph: clean %s", steps[-1]["ops"])
    return model, steps
