"""Ship a full-size model as a few kilobytes: strip big initializers, refill them elsewhere.

A benchmark host without TensorFlow cannot export the model, and copying a
120 MB file to every machine is slow. Speed does not depend on the weight
values, and numeric checks compare providers on the *same* weights, so the
graph can travel without its large tensors and :func:`refill` regenerates
them deterministically from each initializer's name (so an fp32 and an
fp16 export of one network get the same values, up to fp16 rounding).
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["strip", "refill", "is_stripped", "materialize", "STRIP_MARK"]

STRIP_MARK = "unet_bench.stripped"


def strip(model, min_elements: int = 256):
    """Clear the data of every initializer of at least ``min_elements`` values (dims and dtype kept).

    Counted in elements, not bytes, so an fp32 and an fp16 export lose the
    same tensors (the 21x64 head is 5 KB in fp32 but 2.6 KB in fp16); the
    few-element Resize scales always stay.
    """
    for init in model.graph.initializer:
        if init.raw_data and int(np.prod(init.dims)) >= min_elements:
            init.ClearField("raw_data")
    from onnx import helper

    props = {p.key: p.value for p in model.metadata_props}
    props[STRIP_MARK] = "1"
    helper.set_model_props(model, props)
    return model


def is_stripped(model) -> bool:
    """True for a model made by :func:`strip` that has not been refilled."""
    return any(p.key == STRIP_MARK for p in model.metadata_props)


def refill(model, *, head_scale: float = 40.0, seed: int = 0):
    """Fill stripped initializers with He-normal values seeded by their names.

    The last Conv's kernel is multiplied by ``head_scale`` so the softmax is
    peaked like a trained model's (random init gives near-uniform
    probabilities, which makes mask-agreement checks vacuous).
    """
    from onnx import helper, numpy_helper

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    head_weight = convs[-1].input[1] if convs else None
    for init in model.graph.initializer:
        if init.raw_data or init.float_data or init.int64_data or init.int32_data:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
        shape = tuple(init.dims)
        rng = np.random.default_rng(seed + zlib.crc32(init.name.encode()))
        if len(shape) == 4:  # conv kernel OIHW: He-normal over fan-in
            fan_in = int(np.prod(shape[1:]))
            values = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            if init.name == head_weight:
                values *= head_scale
        else:
            values = rng.standard_normal(shape) * 0.01
        init.CopyFrom(numpy_helper.from_array(values.astype(dtype), init.name))
    props = {p.key: p.value for p in model.metadata_props if p.key != STRIP_MARK}
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    return model


def materialize(path, folder, *, seed: int = 0):
    """``path`` itself, or for a stripped model a refilled copy written into ``folder``.

    What a benchmark that takes a model file calls first, so that the
    weight-free copies of ``bench-unet --save-models`` (or ``gpu-suite
    --prepare``) run anywhere without TensorFlow.
    """
    from pathlib import Path

    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    if not is_stripped(model):
        return path
    out = Path(folder) / path.name
    onnx.save(refill(model, seed=seed), str(out))
    return out
