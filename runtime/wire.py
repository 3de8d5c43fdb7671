"""The wire contract: how a tensor's type is spelled in ONNX, numpy, the Open Inference Protocol and Triton.

One table, read by the model loader, ``segment-unet serve``, the Triton
client and the Triton repository writer, so the four never disagree about a
type. The names come from the protocol and Triton's own files:

- Open Inference Protocol datatypes ("FP32", ...): KServe's
  ``docs/predict-api/v2/required_api.md``, "Tensor Data Types";
- Triton's ``DataType`` enum ("TYPE_FP32" = 11, ...): triton-inference-server/common
  ``protobuf/model_config.proto``;
- ONNX ``TensorProto.DataType`` numbers (FLOAT = 1, ...): onnx ``onnx/onnx.proto``;
- ONNX Runtime's type strings ("tensor(float)"): ``NodeArg.type`` of its Python API.

Only the types an exported model uses are listed; anything else is refused by
whoever looks it up, with the list of what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model_info import METADATA_PREFIX

__all__ = [
    "WireType",
    "WIRE_TYPES",
    "by_datatype",
    "by_numpy",
    "by_onnx",
    "by_ort",
    "by_triton",
    "METADATA_PREFIX",
    "TRT_WORKSPACE_BYTES",
]

#: TensorRT builder workspace, in the runtime's provider options and the Triton repository's
#: accelerator parameters: enough for the largest 512x512 fp16 tactic at batch 8.
TRT_WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class WireType:
    """One tensor element type under each of its names."""

    datatype: str  #: Open Inference Protocol name ("FP32")
    numpy: np.dtype
    triton: str  #: Triton DataType enum name ("TYPE_FP32")
    triton_enum: int  #: its number in model_config.proto
    onnx: int  #: ONNX TensorProto.DataType
    ort: str  #: ONNX Runtime's NodeArg.type ("tensor(float)")

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire (binary tensor data is the raw little-endian array)."""
        return self.numpy.itemsize


WIRE_TYPES: tuple[WireType, ...] = (
    WireType("FP32", np.dtype(np.float32), "TYPE_FP32", 11, 1, "tensor(float)"),
    WireType("FP16", np.dtype(np.float16), "TYPE_FP16", 10, 10, "tensor(float16)"),
    WireType("UINT8", np.dtype(np.uint8), "TYPE_UINT8", 2, 2, "tensor(uint8)"),
    WireType("INT64", np.dtype(np.int64), "TYPE_INT64", 9, 7, "tensor(int64)"),
)


def _lookup(field: str, value) -> WireType:
    for t in WIRE_TYPES:
        if getattr(t, field) == value:
            return t
    allowed = ", ".join(str(getattr(t, field)) for t in WIRE_TYPES)
    raise KeyError(f"{field} {value!r} is not a tensor type this model contract uses ({allowed})")


def by_datatype(name: str) -> WireType:
    """The type whose protocol name is ``name`` ("FP32"); KeyError naming the allowed ones otherwise."""
    return _lookup("datatype", name)


def by_numpy(dtype) -> WireType:
    """The type of a numpy dtype."""
    return _lookup("numpy", np.dtype(dtype))


def by_triton(name: str) -> WireType:
    """The type of a Triton config ``data_type`` ("TYPE_FP32")."""
    return _lookup("triton", name)


def by_onnx(elem_type: int) -> WireType:
    """The type of an ONNX ``TensorProto`` element type number."""
    return _lookup("onnx", elem_type)


def by_ort(type_string: str) -> WireType:
    """The type of an ONNX Runtime ``NodeArg.type`` ("tensor(float)")."""
    return _lookup("ort", type_string)
