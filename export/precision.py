"""Reduced-precision variants of the clean fp32 graph (library calls only).

fp16 uses ONNX Runtime's own converter (``onnxruntime.transformers.float16``):
it is maintained with the runtime it targets and, unlike
onnxconverter-common's, knows that ``Resize``'s ``scales`` input must stay
float32 (ANCHORS: the other converter either wraps every Resize in Casts or
makes the scales fp16, which is invalid).

I/O types of an fp16 model: the input stays float32 and probabilities/logits
come out float32 (``keep_io_types``), so callers need not care about the
precision inside; the argmax head outputs uint8 whatever the precision.
"""

from __future__ import annotations

import logging

__all__ = ["to_fp16", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")

#: Softmax stays fp32: summing 21 exponentials in fp16 loses the small
#: probabilities a user may threshold on, and its cost is negligible.
_FP32_OPS = ["Softmax"]


def to_fp16(model):
    """Return an fp16 copy of ``model`` (fp32 I/O, Softmax kept in fp32)."""
    from onnxruntime.transformers import float16

    block = list(float16.DEFAULT_OP_BLOCK_LIST) + _FP32_OPS
    converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # The converter appends its I/O Casts at the end of the node list, which
    # breaks ONNX's topological-order rule; onnxslim re-sorts the graph (and
    # drops Cast pairs that cancel).
    from .graph import slim

    converted = slim(converted)
    log.info("precision: fp16 (fp32 I/O, fp32 %s)", ", ".join(_FP32_OPS))
    return converted
