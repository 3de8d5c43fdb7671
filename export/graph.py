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
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import ConversionError

__all__ = [
    "op_histogram",
    "node_attr",
    "attach_weights",
    "clean",
    "check",
    "slim",
    "GraphPass",
    "FORBIDDEN_OPS",
]

log = logging.getLogger(__name__)

#: Ops that must not survive clean-up: they are the remains of shape
#: arithmetic or of tf2onnx's Tile-based upsampling.
FORBIDDEN_OPS = frozenset(
    {"Shape", "Gather", "Tile", "Reshape", "Expand", "Slice", "ConstantOfShape", "Range"}
)


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


def attach_weights(
    model, weights: Mapping[str, np.ndarray], names: Mapping[str, str] | None = None
):
    """Turn the graph inputs named in ``weights`` into initializers, evaluating what only transforms them.

    tf2onnx converts a function whose weights are inputs (see convert.py)
    with the layout changes on them as nodes: a Transpose from Keras' HWIO
    kernels to ONNX's OIHW, a Reshape/Squeeze on each bias. Every node whose
    inputs are all weights (or constants derived from them) is run once here,
    by ONNX Runtime on a graph of just those nodes, and the tensors the rest
    of the graph reads become initializers, named by ``names`` (a Keras
    variable path such as ``conv1-1/kernel``) so the graph reads like the
    model. Nothing is pattern-matched: whatever tf2onnx put on a weight is
    evaluated as it is.

    Args:
        model: a ModelProto whose graph inputs include every key of ``weights``;
            modified in place and returned.
        weights: graph-input name -> value.
        names: graph-input name -> initializer name of the tensors derived
            from it (default: the tensor's own name).
    """
    from onnx import numpy_helper

    g = model.graph
    missing = set(weights) - {i.name for i in g.input}
    if missing:
        raise ConversionError(f"weights {sorted(missing)} are not inputs of the converted graph")
    constants = {t.name for t in g.initializer}
    weight_nodes, source = _weight_nodes(g, weights, constants)
    inner = {id(n) for n in weight_nodes}
    read = [i for n in g.node if id(n) not in inner for i in n.input] + [o.name for o in g.output]
    boundary = list(dict.fromkeys(t for t in read if t in source))
    values = {t: weights[t] for t in boundary if t in weights}
    computed = [t for t in boundary if t not in weights]
    if computed:
        values.update(_evaluate(model, weight_nodes, computed, weights))
    rename: dict[str, str] = {}
    taken = constants | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    for t in boundary:
        wanted = (names or {}).get(source[t], t)
        name = wanted if wanted not in taken and wanted not in rename.values() else t
        rename[t] = name
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values.pop(t)), name))
    kept = [n for n in g.node if id(n) not in inner]
    for n in kept:
        n.input[:] = [rename.get(i, i) for i in n.input]
    del g.node[:]
    g.node.extend(kept)
    inputs = [i for i in g.input if i.name not in weights]
    del g.input[:]
    g.input.extend(inputs)
    info = [v for v in g.value_info if v.name not in source]
    del g.value_info[:]
    g.value_info.extend(info)
    log.info(
        "graph: attached %d weights as %d initializers (%d nodes evaluated)",
        len(weights),
        len(boundary),
        len(weight_nodes),
    )
    return model


def _weight_nodes(g, weights: Mapping[str, np.ndarray], constants: set[str]):
    """The nodes that read only weights (or constants, or what such nodes made), in graph order, and
    for each weight-derived tensor the weight input it comes from (itself when several)."""
    source = {name: name for name in weights}
    nodes = []
    for node in g.node:  # tf2onnx emits nodes in topological order
        ins = [i for i in node.input if i]
        if (
            ins
            and any(i in source for i in ins)
            and all(i in source or i in constants for i in ins)
        ):
            nodes.append(node)
            origins = {source[i] for i in ins if i in source}
            for out in node.output:
                source[out] = origins.pop() if len(origins) == 1 else out
    return nodes, source


def _evaluate(model, nodes: list, outputs: list[str], weights: Mapping[str, np.ndarray]) -> dict:
    """``outputs`` of a graph of just ``nodes``, run once by ONNX Runtime on the weights."""
    import onnxruntime as ort
    from onnx import helper

    g = model.graph
    used = {i for n in nodes for i in n.input}
    sub = helper.make_graph(
        list(nodes),
        "attach_weights",
        [i for i in g.input if i.name in used],
        [helper.make_empty_tensor_value_info(t) for t in outputs],
        [t for t in g.initializer if t.name in used],
    )
    sub_model = helper.make_model(
        sub, opset_imports=model.opset_import, ir_version=model.ir_version
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        sub_model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    feeds = {i.name: weights[i.name] for i in sub.input}
    return dict(zip(outputs, session.run(outputs, feeds), strict=True))


def resize_to_scales(model, factors: Sequence[tuple[int, int]]):
    """Replace each Resize's computed ``sizes`` with constant NCHW ``scales``.

    Args:
        model: the tf2onnx graph; its Resize nodes run on NCHW data (tf2onnx's
            Resize handler always transposes to NCHW around it).
        factors: (fh, fw) of each UpSampling2D, in network order (the UNet's
            upsamplings form a chain, so graph order equals network order).
    """
    from onnx import numpy_helper

    # Only the nearest upsamplings; a bilinear resize (another network's) keeps its own inputs.
    resizes = [
        n
        for n in model.graph.node
        if n.op_type == "Resize" and node_attr(n, "mode", b"nearest") in (b"nearest", "nearest")
    ]
    if len(resizes) != len(factors):
        raise ConversionError(
            f"expected {len(factors)} nearest Resize nodes (one per nearest UpSampling2D), tf2onnx produced {len(resizes)}"
        )
    for i, (node, (fh, fw)) in enumerate(zip(resizes, factors, strict=True)):
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


#: Initializers at least this large are weights: onnxslim never needs their values (see slim).
_WEIGHT_BYTES = 1 << 12


def slim(model):
    """Dead-code elimination and constant folding with onnxslim, the weights set aside.

    onnxslim re-serializes and shape-infers the model many times over (its
    constant folder, its ``ByteSize`` checks): with the 121 MB of weights
    inside, that took ~5 s on a 2-core CPU; without them, a fraction of a
    second. So the weights are declared as graph inputs while it runs (it
    folds only the small shape constants) and become initializers again after.
    """
    import onnxslim
    from onnx import helper

    g = model.graph
    order = {t.name: i for i, t in enumerate(g.initializer)}
    weights = {t.name: t for t in g.initializer if _tensor_bytes(t) >= _WEIGHT_BYTES}
    kept = [t for t in g.initializer if t.name not in weights]
    del g.initializer[:]
    g.initializer.extend(kept)
    g.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights.values()
    )
    # onnxslim's defaults (its pattern fusions included): this graph has
    # nothing they fuse, and the tests pin the exact op histogram, so a new
    # onnxslim that started rewriting ops would fail them, not ship. Except
    # weight tying: it merges equal initializers (two all-zero biases of an
    # untrained model), and a bias shared by two convolutions cannot be
    # quantized per convolution or padded in place.
    out = onnxslim.slim(model, skip_optimizations=["weight_tying"])
    o = out.graph
    inputs = [i for i in o.input if i.name not in weights]
    del o.input[:]
    o.input.extend(inputs)
    used = {i for n in o.node for i in n.input} | {v.name for v in o.output}
    inits = [*o.initializer, *(t for name, t in weights.items() if name in used)]
    # the graph's own order (Netron lists them so)
    inits.sort(key=lambda t: order.get(t.name, len(order)))
    del o.initializer[:]
    o.initializer.extend(inits)
    return out


def _tensor_bytes(t) -> int:
    """Bytes of an initializer's values, whichever field holds them."""
    return len(t.raw_data) or 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
        len(t.int64_data) + len(t.double_data)
    )


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


@dataclass(frozen=True)
class GraphPass:
    """One named step of the clean-up: ``run(model)`` returns the model and a note for the report (or None)."""

    name: str
    run: Callable


def clean(
    model,
    *,
    factors: Sequence[tuple[int, int]],
    input_name: str,
    output_name: str,
    strict: bool = True,
):
    """Run the clean-up passes in order (the pipeline's later steps rewrite the graph further).

    ``strict``: fail if shape arithmetic is left (the reference graph has none once cleaned).

    Returns:
        ``(model, steps)`` where ``steps`` is a list of
        ``{"step": name, "ops": histogram}`` for the report, the converter's
        graph first.
    """
    passes = [
        GraphPass("resize_to_scales", lambda m: (resize_to_scales(m, factors), None)),
        GraphPass("rename_io", lambda m: (rename_io(m, input_name, output_name), None)),
        GraphPass("onnxslim", lambda m: (slim(m), None)),
    ]
    steps = [{"step": "tf2onnx", "ops": op_histogram(model)}]
    log.info("graph: tf2onnx %s", steps[0]["ops"])
    for p in passes:
        model, _ = p.run(model)
        steps.append({"step": p.name, "ops": op_histogram(model)})
        log.info("graph: after %s: %d nodes", p.name, len(model.graph.node))
    if strict:
        _assert_clean(model)
    log.info("graph: clean %s", steps[-1]["ops"])
    return model, steps
