"""FLOPs of an ONNX model, computed from its graph (never hard-coded).

Counts the multiply-adds of Conv and ConvTranspose nodes (2 FLOPs each: the
network has no Gemm or MatMul) after shape inference at a concrete input
size; activations, pooling and resize are memory-bound and left out, as is
customary. The reference network is 494 GFLOP per 512x512 image. bench-unet
divides every row's time by the reference graph's count, so a folded graph (15%
fewer multiply-adds) shows its speed in the reference graph's FLOPs, which its note says.
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv_flops"]


def conv_flops(model, batch: int, height: int, width: int) -> int:
    """FLOPs of one forward pass of ``model`` (a ModelProto) at ``(batch, height, width)``."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    nchw = dims[1].dim_value == 3
    concrete = (batch, 3, height, width) if nchw else (batch, height, width, 3)
    for d, v in zip(dims, concrete, strict=True):
        d.ClearField("dim_param")
        d.dim_value = v
    # Shapes stored for the exported size would contradict the new one.
    del m.graph.value_info[:]
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    inferred = shape_inference.infer_shapes(m, data_prop=True)
    value_shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = shapes.get(node.input[1]) or value_shapes.get(node.input[1])
        out = value_shapes.get(node.output[0])
        src = value_shapes.get(node.input[0])
        if not w or not out or 0 in out or (node.op_type == "ConvTranspose" and not src):
            raise ValueError(f"cannot infer the shapes of {node.op_type} {node.name!r}")
        if node.op_type == "Conv":  # W: [out, in/group, kh, kw]; each output value is a dot product
            _, cin_per_group, *k = w
            total += 2 * int(np.prod(out)) * cin_per_group * int(np.prod(k))
        else:  # W: [in, out/group, kh, kw]; each input value is scattered to kh*kw*out/group outputs
            _, cout_per_group, *k = w
            total += 2 * int(np.prod(src)) * cout_per_group * int(np.prod(k))
    return total
