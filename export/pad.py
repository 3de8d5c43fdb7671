"""Pad the two narrow convolutions' channel counts to a multiple of 8 (GPU tensor cores).

cuDNN's fast fp16 NHWC convolution kernels need channel counts that are
multiples of 8 (16-byte aligned rows). Two layers of the reference network miss that:
``conv1-1`` reads the 3 RGB channels, and the 1x1 head writes 21 classes.
On an H100 (kernel profile in benchmarks/results/
h100-2026-11-25-profile-fp16-u8-b1.txt) they fall back to slow kernels:
conv1-1 to an ``indexed_wo_smem`` kernel (0.036 ms, ~25 TFLOP/s) and the
head to an ``align1`` CUTLASS GEMM (0.044 ms, ~16 TFLOP/s), where the 3x3
convolutions run at 400-750 TFLOP/s.

Both rewrites are exact:

- conv1-1: a ``Pad`` appends zero channels to its input and its kernel gets
  zero input channels: every added product is ``0 * 0``.
- the head, only when it feeds the in-graph ``ArgMax`` (``--head argmax``):
  zero kernel rows and a bias of -65504 (the lowest finite fp16, exact in
  fp32 too) for the added classes. Their logit is -65504 for every pixel,
  below any real logit of a working model, and ArgMax returns the first
  index on a tie, so the mask is the same. Softmax and logits heads are not
  padded: the extra classes would be visible in their output.

The function is unchanged, so verification is unchanged. What the GPU
gains is measured by ``bench-unet --pad-channels off on``: 1.39 -> 1.34 ms
at batch 1 on an H100 with the convtranspose fold, nothing on the reference model's
graph (benchmarks/results/h100-2026-11-26-goal.md).
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import ConversionError
from .graph import node_attr

__all__ = ["pad_channels", "PAD_MULTIPLE", "PAD_LOGIT"]

log = logging.getLogger(__name__)

#: fp16 tensor-core kernels want channel counts in multiples of 8.
PAD_MULTIPLE = 8
#: The added classes' logit: the lowest finite fp16, so it survives fp16 conversion exactly.
PAD_LOGIT = -65504.0


def pad_channels(model, multiple: int = PAD_MULTIPLE):
    """Pad the RGB conv's input channels and an argmax head's classes to multiples of ``multiple``.

    Args:
        model: an ``onnx.ModelProto`` after clean-up (NCHW inside), fp32 or
            fp16 (kernels keep their type); modified in place and returned.
        multiple: the channel multiple to reach.

    Returns:
        ``(model, padded)``: the names of the rewritten Conv nodes (empty
        when neither layer needs it, e.g. 24 classes).

    Raises:
        ConversionError: when no single 3-channel Conv is found (not a
            VGG19-UNet graph).
    """
    g = model.graph
    graph = _Weights(g)
    convs = [
        n for n in g.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in graph.inits
    ]
    first = [
        n for n in convs if graph.inits[n.input[1]].dims[1] == 3 and node_attr(n, "group", 1) == 1
    ]
    if len(first) != 1:
        raise ConversionError(
            f"expected one Conv reading the 3 RGB channels, found {len(first)}; is this a VGG19-UNet graph?"
        )
    padded: list[str] = []
    pad = _pad_rgb_conv(first[0], graph, multiple)
    if pad is not None:
        padded.append(first[0].name or first[0].output[0])
    heads = [
        n for n in convs if any(c.op_type == "ArgMax" for c in graph.consumers.get(n.output[0], []))
    ]
    outputs = {o.name for o in g.output}
    if len(heads) == 1 and _pad_argmax_head(heads[0], graph, multiple, outputs):
        padded.append(heads[0].name or heads[0].output[0])
    if pad is not None:
        # Inserted last: rebuilding the node list copies the nodes, so edits to them must come
        # first. Right before conv1-1 keeps the list topologically sorted, as ONNX requires.
        nodes = list(g.node)
        at = next(i for i, n in enumerate(nodes) if n.output[0] == first[0].output[0])
        nodes.insert(at, pad)
        del g.node[:]
        g.node.extend(nodes)
    g.initializer.extend(graph.new)
    # Shapes recorded for the old tensors (value_info) are now wrong for the padded ones: drop them.
    touched = {n.output[0] for n in convs if (n.name or n.output[0]) in padded}
    keep = [v for v in g.value_info if v.name not in touched]
    del g.value_info[:]
    g.value_info.extend(keep)
    log.info("pad_channels: %s", ", ".join(padded) or "nothing to pad")
    return model, padded


class _Weights:
    """A graph's initializers and each tensor's consumers; in-place replacement of a per-node weight."""

    def __init__(self, g):
        self.inits = {t.name: t for t in g.initializer}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.new: list = []  # initializers to add

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name])

    def replace(self, name: str, arr: np.ndarray) -> None:
        from onnx import numpy_helper

        # A shared initializer would change another node too: ours are per-Conv (tf2onnx), check
        # anyway.
        if len(self.consumers.get(name, [])) != 1:
            raise ConversionError(
                f"initializer {name!r} is shared by several nodes; cannot pad it in place"
            )
        self.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))

    def add(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        self.new.append(numpy_helper.from_array(arr, name))
        return name


def _pad_rgb_conv(conv, graph: _Weights, multiple: int):
    """Zero input channels appended to the RGB conv's kernel; returns the Pad node its input needs (or None)."""
    from onnx import helper

    w = graph.array(conv.input[1])
    extra = -w.shape[1] % multiple
    if not extra:
        return None
    zeros = np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)
    graph.replace(conv.input[1], np.concatenate([w, zeros], axis=1))
    base = conv.name or conv.output[0]
    # Pad's pads: begins then ends per axis (N, C, H, W): zeros appended after the 3 channels.
    pads = graph.add(f"{base}/pad_channels_pads", np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64))
    out = f"{base}/pad_channels"
    pad = helper.make_node("Pad", [conv.input[0], pads], [out], name=out, mode="constant")
    conv.input[0] = out
    return pad


def _pad_argmax_head(head, graph: _Weights, multiple: int, outputs: set[str]) -> bool:
    """Classes that never win (zero kernel, PAD_LOGIT bias) appended to a head only an ArgMax reads."""
    consumers = graph.consumers[head.output[0]]
    argmax = [c for c in consumers if c.op_type == "ArgMax"]
    # Over the channel axis, and first index on ties (select_last_index would let a padded class
    # win one).
    only_argmax = (
        len(consumers) == 1
        and node_attr(argmax[0], "axis", 0) in (1, -3)
        and not node_attr(argmax[0], "select_last_index", 0)
    )
    w = graph.array(head.input[1])
    extra = -w.shape[0] % multiple
    if not (only_argmax and extra and head.output[0] not in outputs):
        return False
    graph.replace(head.input[1], np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)]))
    if len(head.input) > 2 and head.input[2]:
        b = graph.array(head.input[2])
        graph.replace(head.input[2], np.concatenate([b, np.full(extra, PAD_LOGIT, b.dtype)]))
    else:
        b = np.concatenate([np.zeros(w.shape[0], w.dtype), np.full(extra, PAD_LOGIT, w.dtype)])
        bias = graph.add(f"{head.name or head.output[0]}/pad_channels_bias", b)
        del head.input[2:]
        head.input.append(bias)
    return True
