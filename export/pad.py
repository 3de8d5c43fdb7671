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
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = [n for n in g.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits]
    first = [n for n in convs if inits[n.input[1]].dims[1] == 3 and node_attr(n, "group", 1) == 1]
    if len(first) != 1:
        raise ConversionError(
            f"expected one Conv reading the 3 RGB channels, found {len(first)}; is this a VGG19-UNet graph?"
        )

    padded, new_inits, pad = [], [], None

    def replace_init(name: str, arr: np.ndarray) -> None:
        # A shared initializer would change another node too: ours are per-Conv (tf2onnx), check
        # anyway.
        if len(consumers.get(name, [])) != 1:
            raise ConversionError(
                f"initializer {name!r} is shared by several nodes; cannot pad it in place"
            )
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))

    conv = first[0]
    w = numpy_helper.to_array(inits[conv.input[1]])
    extra = -w.shape[1] % multiple
    if extra:
        replace_init(
            conv.input[1],
            np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1),
        )
        base = conv.name or conv.output[0]
        pads = f"{base}/pad_channels_pads"
        # Pad's pads: begins then ends per axis (N, C, H, W): zeros appended after the 3 channels.
        new_inits.append(
            numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), pads)
        )
        out = f"{base}/pad_channels"
        pad = helper.make_node("Pad", [conv.input[0], pads], [out], name=out, mode="constant")
        conv.input[0] = out
        padded.append(base)

    heads = [n for n in convs if any(c.op_type == "ArgMax" for c in consumers.get(n.output[0], []))]
    if len(heads) == 1:
        head = heads[0]
        argmax = [c for c in consumers[head.output[0]] if c.op_type == "ArgMax"]
        # Over the channel axis, and first index on ties (select_last_index would let a padded class
        # win one).
        only_argmax = (
            len(consumers[head.output[0]]) == 1
            and node_attr(argmax[0], "axis", 0) in (1, -3)
            and not node_attr(argmax[0], "select_last_index", 0)
        )
        w = numpy_helper.to_array(inits[head.input[1]])
        extra = -w.shape[0] % multiple
        if only_argmax and extra and head.output[0] not in {o.name for o in g.output}:
            replace_init(
                head.input[1], np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)], axis=0)
            )
            if len(head.input) > 2 and head.input[2]:
                b = numpy_helper.to_array(inits[head.input[2]])
                replace_init(head.input[2], np.concatenate([b, np.full(extra, PAD_LOGIT, b.dtype)]))
            else:
                bias = f"{head.name or head.output[0]}/pad_channels_bias"
                b = np.concatenate(
                    [np.zeros(w.shape[0], w.dtype), np.full(extra, PAD_LOGIT, w.dtype)]
                )
                new_inits.append(numpy_helper.from_array(b, bias))
                del head.input[2:]
                head.input.append(bias)
            padded.append(head.name or head.output[0])

    if pad is not None:
        # Inserted last: rebuilding the node list copies the nodes, so edits to them must come
        # first.
        # Right before conv1-1 keeps the list topologically sorted, as ONNX requires.
        nodes = list(g.node)
        nodes.insert(next(i for i, n in enumerate(nodes) if n.output[0] == conv.output[0]), pad)
        del g.node[:]
        g.node.extend(nodes)
    g.initializer.extend(new_inits)
    # Shapes recorded for the old tensors (value_info) are now wrong for the padded ones: drop them.
    touched = {n.output[0] for n in convs if (n.name or n.output[0]) in padded}
    keep = [v for v in g.value_info if v.name not in touched]
    del g.value_info[:]
    g.value_info.extend(keep)
    log.info("pad_channels: %s", ", ".join(padded) or "nothing to pad")
    return model, padded
