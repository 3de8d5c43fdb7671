"""Fold each decoder stage's nearest 2x upsampling into the convolution after it.

The reference decoder stage is ``conv3x3(concat(skip, up2(x)))``. Split along
the concatenated channels it is ``conv3x3_s(skip) + conv3x3_u(up2(x))``,
and the second term never needs ``up2(x)``: every output pixel
``(2h+i, 2w+j)`` of a 3x3 convolution over a nearest-upsampled map reads
only the 2x2 input pixels around ``(h, w)``, with the 3x3 taps summed into
2x2 ones (rows: phase 0 reads rows ``h-1, h`` with taps ``(k0, k1+k2)``,
phase 1 reads ``h, h+1`` with ``(k0+k1, k2)``; columns alike). So the
up-branch costs 16 instead of 36 multiply-adds per input pixel and output
channel, and neither the upsampled map nor the concatenation is ever
materialized. Over the whole network that is 15% fewer multiply-adds
(247 -> 210 GMAC at 512x512). It is the same function; only the order of
the additions changes (fp32 results agree with Keras to ~1e-7).

Two equivalent ONNX forms, because runtimes support them differently:

- ``convtranspose``: the four 2x2 phase kernels are exactly a 4x4
  ConvTranspose with stride 2 and pads 1. One op that ONNX Runtime's CUDA
  EP runs in NHWC (its NHWC kernel list has ConvTranspose but neither
  Resize nor DepthToSpace), so with ``prefer_nhwc`` the decoder needs no
  layout transposes.
- ``phase``: four 2x2 Convs (asymmetric pads), Concat, DepthToSpace. Every
  piece has an integer kernel in ONNX Runtime's CPU EP, which is what an
  INT8 graph needs (ConvTranspose stays float there).
- ``phase_nhwc``: ``phase`` with the interleave written as NHWC
  Transpose/Reshape/Transpose/Reshape/Transpose instead of DepthToSpace.
  ORT's CPU EP runs integer convolutions in NHWC and DepthToSpace only in
  NCHW, so DepthToSpace costs three layout transposes per stage; the
  explicit NHWC transposes cancel against ORT's own instead, leaving one
  block copy. The last Reshape needs the spatial size, so a stage whose
  size is not static falls back to ``phase``. Slower in fp32 on the CPU
  (its NCHWc path makes every transpose real): an INT8 form.

Measured effects: docs/performance.md and the result files it cites.
"""

from __future__ import annotations

import logging

import numpy as np

from .errors import ConversionError
from .graph import node_attr

__all__ = [
    "FOLD_FORMS",
    "FOLD_CHOICES",
    "auto_fold_form",
    "fold_upsample_convs",
    "transpose_kernel",
]

log = logging.getLogger(__name__)

#: ``off`` keeps the reference Resize + Concat + Conv graph.
FOLD_FORMS = ("off", "convtranspose", "phase", "phase_nhwc")
#: What --fold-upsample accepts: ``auto`` is resolved per precision by :func:`auto_fold_form`.
FOLD_CHOICES = ("auto", *FOLD_FORMS)


def auto_fold_form(precision: str) -> str:
    """The fold ``--fold-upsample auto`` stands for with ``precision``, each where it was measured fastest.

    - int8 (a CPU model): ``phase_nhwc``, 16% faster than ``phase`` on a
      2-core AVX-512 VNNI CPU at the same masks (benchmarks/results/cpu-fold.md;
      a dynamic-size export falls back to ``phase``).
    - fp16 (a GPU model): ``convtranspose``, the one fold ONNX Runtime's CUDA
      EP runs in NHWC: 1.90 -> 1.39 ms at batch 1 and 1.72 -> 1.13 ms per
      image at batch 8 on an H100 (benchmarks/results/h100-2026-11-26-goal.md),
      masks as before (99.96% vs 99.97% agreement with fp32).
    - fp32: ``off``, the reference graph, node for node what Keras computes
      (the reference export). On a CPU ``phase`` is 12% faster
      (cpu-fold.md); fp32 on a GPU was not measured with a fold.
    """
    return {"int8": "phase_nhwc", "fp16": "convtranspose"}.get(precision, "off")


def _phase_kernels(w: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """3x3 kernels ``[O, I, 3, 3]`` -> the four 2x2 phase kernels ``[O, I, 2, 2]``, keyed (row, col) phase."""

    def split(k, axis):
        a, b, c = (np.take(k, [t], axis) for t in range(3))
        return np.concatenate([a, b + c], axis), np.concatenate([a + b, c], axis)

    return {(i, j): kij for i, ki in enumerate(split(w, 2)) for j, kij in enumerate(split(ki, 3))}


def transpose_kernel(w: np.ndarray) -> np.ndarray:
    """3x3 kernels ``[O, I, 3, 3]`` -> the 4x4 ConvTranspose kernel ``[I, O, 4, 4]`` (stride 2, pads 1).

    Per axis, output ``2h`` reads input ``h-1`` through tap 3 and ``h``
    through tap 1; output ``2h+1`` reads ``h`` through tap 2 and ``h+1``
    through tap 0: taps ``(k2, k1+k2, k0+k1, k0)``.
    """

    def expand(k, axis):
        a, b, c = (np.take(k, [t], axis) for t in range(3))
        return np.concatenate([c, b + c, a + b, a], axis)

    return np.ascontiguousarray(expand(expand(w, 2), 3).transpose(1, 0, 2, 3))


def _is_nearest_2x(node, inits) -> bool:
    """A Resize that is the reference UpSampling2D: nearest, asymmetric, floor, constant NCHW scales (1, 1, 2, 2)."""
    from onnx import numpy_helper

    if node.op_type != "Resize" or len(node.input) < 3 or node.input[2] not in inits:
        return False
    scales = numpy_helper.to_array(inits[node.input[2]])
    return (
        node_attr(node, "mode", b"nearest") == b"nearest"
        and node_attr(node, "coordinate_transformation_mode", b"half_pixel") == b"asymmetric"
        and node_attr(node, "nearest_mode", b"round_prefer_floor") == b"floor"
        and scales.shape == (4,)
        and np.array_equal(scales, [1, 1, 2, 2])
    )


def _is_plain_3x3(node, inits) -> bool:
    if (
        node.op_type != "Conv"
        or node.input[1] not in inits
        or list(inits[node.input[1]].dims[2:]) != [3, 3]
    ):
        return False
    # tf2onnx writes explicit pads for fixed sizes and SAME_UPPER for dynamic ones: for a
    # 3x3 kernel at stride 1 both mean one pixel of zeros on every side.
    auto_pad = node_attr(node, "auto_pad", b"NOTSET")
    same = (
        auto_pad == b"NOTSET" and list(node_attr(node, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
    ) or (auto_pad in (b"SAME_UPPER", b"SAME_LOWER") and node_attr(node, "pads") is None)
    return (
        same
        and list(node_attr(node, "strides", [1, 1])) == [1, 1]
        and list(node_attr(node, "dilations", [1, 1])) == [1, 1]
        and node_attr(node, "group", 1) == 1
    )


def fold_upsample_convs(model, form: str):
    """Rewrite every ``Resize(2x nearest) -> Concat(axis 1) -> Conv3x3`` in `model` (an NCHW graph).

    Args:
        model: an ``onnx.ModelProto`` after clean-up (constant Resize
            scales, NCHW inside), fp32 or fp16; it is modified in place and
            returned. (export-unet folds before fp16 conversion; fp16 input
            is for models exported without the fold.)
        form: one of :data:`FOLD_FORMS` (module docstring).

    Returns:
        ``(model, folded)``: the number of stages rewritten. A graph where a
        stage does not match the pattern exactly is left as it was there.
    """
    if form not in FOLD_FORMS:
        raise ConversionError(f"fold form {form!r} is not one of {', '.join(FOLD_FORMS)}")
    if form == "off":
        return model, 0
    index = _GraphIndex(model)
    # Nodes are keyed by their (unique) first output: protobuf wrappers have no stable identity.
    replace: dict[str, list] = {}
    new_inits: list = []
    dropped: set[str] = set()
    for conv in model.graph.node:
        stage = _match_stage(conv, index)
        if stage is None:
            continue
        resize, cat, k_up = stage
        nodes, inits = _folded_stage(conv, resize, cat, k_up, form, index)
        replace[conv.output[0]] = nodes
        new_inits += inits
        dropped.update({resize.output[0], cat.output[0]})
    if replace:
        _splice(model.graph, replace, dropped, new_inits)
        log.info("fold: %d upsample+concat+conv stages -> %s", len(replace), form)
    return model, len(replace)


class _GraphIndex:
    """What the matcher asks of a graph: initializers, each tensor's producer and use count, static dims."""

    def __init__(self, model):
        g = model.graph
        # TensorProtos, not arrays: only the matched kernels are ever decoded.
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.uses: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self.channels, self.spatial = _static_dims(model)


def _match_stage(conv, index: _GraphIndex):
    """``(resize, concat, k_up)`` when ``conv`` is a plain 3x3 on a 2-input Concat of one 2x upsampling
    (at input ``k_up``) and a skip, each used only there; None otherwise."""
    cat = index.producer.get(conv.input[0])
    if not (
        _is_plain_3x3(conv, index.inits)
        and cat is not None
        and cat.op_type == "Concat"
        and node_attr(cat, "axis") in (1, -3)
        and len(cat.input) == 2
        and index.uses[cat.output[0]] == 1
    ):
        return None
    ups = [
        k
        for k, name in enumerate(cat.input)
        if name in index.producer
        and _is_nearest_2x(index.producer[name], index.inits)
        and index.uses[name] == 1
    ]
    if len(ups) != 1:
        return None
    return index.producer[cat.input[ups[0]]], cat, ups[0]


def _folded_stage(conv, resize, cat, k_up: int, form: str, index: _GraphIndex):
    """The nodes (and new initializers) computing ``conv``'s output in ``form``: a 3x3 conv on the skip
    plus the upsampling's share, folded, added."""
    from onnx import helper, numpy_helper

    x, skip = resize.input[0], cat.input[1 - k_up]
    # Tap sums in fp32, stored in the graph's own weight type (an fp16 graph stays fp16).
    w_native = numpy_helper.to_array(index.inits[conv.input[1]])
    w = w_native.astype(np.float32)
    if x not in index.channels:
        raise ConversionError(
            f"cannot fold the upsampling of {x!r}: its channel count is not known statically"
        )
    c_up = index.channels[x]
    c_skip = w.shape[1] - c_up
    w_up = w[:, :c_up] if k_up == 0 else w[:, c_skip:]
    w_skip = w[:, c_up:] if k_up == 0 else w[:, :c_skip]
    base = conv.name or conv.output[0]
    new_inits: list = []

    def init(suffix, arr, dtype=w_native.dtype):
        """A new initializer; kernels default to the graph's own weight type (fp16 stays fp16)."""
        name = f"{base}/fold_{suffix}"
        new_inits.append(
            numpy_helper.from_array(np.ascontiguousarray(np.asarray(arr, dtype)), name)
        )
        return name

    bias = [conv.input[2]] if len(conv.input) > 2 and conv.input[2] else []
    nodes = [
        helper.make_node(
            "Conv",
            [skip, init("w_skip", w_skip), *bias],
            [f"{base}/fold_skip"],
            name=f"{base}/fold_skip",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        )
    ]
    if form == "convtranspose":
        nodes.append(
            helper.make_node(
                "ConvTranspose",
                [x, init("w_up", transpose_kernel(w_up))],
                [f"{base}/fold_up"],
                name=f"{base}/fold_up",
                kernel_shape=[4, 4],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
            )
        )
    else:
        nodes += _phase_nodes(x, w_up, w.shape[0], base, form, index.spatial.get(x), init)
    nodes.append(
        helper.make_node(
            "Add",
            [f"{base}/fold_up", f"{base}/fold_skip"],
            [conv.output[0]],
            name=f"{base}/fold_add",
        )
    )
    return nodes, new_inits


def _phase_nodes(x: str, w_up, c_out: int, base: str, form: str, hw, init) -> list:
    """The phase forms: four 2x2 convs, their outputs interleaved to twice the size (DepthToSpace, or
    NHWC Reshapes/Transposes for ``phase_nhwc`` at a static size)."""
    from onnx import helper

    nodes, phases = [], []
    for (i, j), k in _phase_kernels(w_up).items():
        name = f"{base}/fold_phase{i}{j}"
        # pads (top, left, bottom, right): phase 0 reads (h-1, h), phase 1 reads (h, h+1).
        nodes.append(
            helper.make_node(
                "Conv",
                [x, init(f"w_phase{i}{j}", k)],
                [name],
                name=name,
                kernel_shape=[2, 2],
                pads=[1 - i, 1 - j, i, j],
            )
        )
        phases.append(name)
    # DepthToSpace (DCR) takes channel block (2i + j) to pixel (2h+i, 2w+j): phases in
    # (0,0),(0,1),(1,0),(1,1) order.
    stack = f"{base}/fold_phases"
    nodes.append(helper.make_node("Concat", phases, [stack], name=stack, axis=1))
    if form == "phase_nhwc" and hw:
        h, w = hw

        def shape(suffix, value):  # the interleave's Reshape targets, int64 initializers
            return init(suffix, value, np.int64)

        return nodes + _nhwc_interleave(stack, f"{base}/fold_up", base, c_out, h, w, shape)
    nodes.append(
        helper.make_node(
            "DepthToSpace",
            [stack],
            [f"{base}/fold_up"],
            name=f"{base}/fold_up",
            blocksize=2,
            mode="DCR",
        )
    )
    return nodes


def _splice(g, replace: dict[str, list], dropped: set[str], new_inits: list) -> None:
    """Put each stage's nodes where its conv was, drop its Resize and Concat, keep only read initializers."""
    ordered = []
    for n in g.node:
        if n.output[0] in dropped:
            continue
        ordered.extend(replace.get(n.output[0], [n]))
    del g.node[:]
    g.node.extend(ordered)
    # The replaced 3x3 kernels and the Resize scales are no longer read by any node.
    used = {i for n in g.node for i in n.input}
    keep = [t for t in list(g.initializer) + new_inits if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _nhwc_interleave(src: str, dst: str, base: str, c: int, h: int, w: int, shape_init) -> list:
    """Nodes taking the phase stack ``[N, 4C, H, W]`` (DCR order) to ``[N, C, 2H, 2W]`` through NHWC views.

    NHWC ``[N, H, W, (i, j, C)]`` -> ``[N, H, W, 2, 2, C]`` -> swap W and i ->
    ``[N, H, 2, W, 2, C]`` = ``[N, 2H, 2W, C]`` in memory: the middle Transpose
    moves whole C-channel blocks.
    """
    from onnx import helper

    t = f"{base}/fold_nhwc"
    return [
        helper.make_node("Transpose", [src], [f"{t}_in"], name=f"{t}_in", perm=[0, 2, 3, 1]),
        helper.make_node(
            "Reshape",
            [f"{t}_in", shape_init("nhwc_split_shape", [0, 0, 0, 2, 2, c])],
            [f"{t}_split"],
            name=f"{t}_split",
        ),
        helper.make_node(
            "Transpose", [f"{t}_split"], [f"{t}_swap"], name=f"{t}_swap", perm=[0, 1, 3, 2, 4, 5]
        ),
        helper.make_node(
            "Reshape",
            [f"{t}_swap", shape_init("nhwc_merge_shape", [0, 2 * h, 2 * w, c])],
            [f"{t}_merge"],
            name=f"{t}_merge",
        ),
        helper.make_node("Transpose", [f"{t}_merge"], [dst], name=dst, perm=[0, 3, 1, 2]),
    ]


def _static_dims(model) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Static channel counts (dim 1) and, where known, (H, W) of the graph's 4-D NCHW tensors."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    channels, spatial = {}, {}
    for vi in (
        list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    ):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[vi.name] = dims[1].dim_value
            if dims[2].HasField("dim_value") and dims[3].HasField("dim_value"):
                spatial[vi.name] = (dims[2].dim_value, dims[3].dim_value)
    return channels, spatial
