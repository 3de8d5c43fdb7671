"""Checks on a model file before ONNX Runtime opens it.

ONNX Runtime follows a tensor's ``external_data`` ``location`` relative to
the model's folder, and would read ``../../etc/passwd`` or ``/dev/zero`` if
a hostile model asked. The runtime has no ``onnx`` package (only numpy and
onnxruntime), so this module reads just enough of the protobuf wire format
to find every ``location`` (initializers, sparse initializers, and tensors
inside node attributes and subgraphs) and refuses any that is absolute or
resolves (symlinks followed) outside the model's folder.

Field numbers are from onnx/onnx.proto3: ModelProto.graph = 7;
GraphProto.node = 1, initializer = 5, sparse_initializer = 15;
NodeProto.attribute = 5; AttributeProto.t = 5, g = 6, tensors = 10,
graphs = 11, sparse_tensor = 22, sparse_tensors = 23;
SparseTensorProto.values = 1, indices = 2; TensorProto.external_data = 13,
data_location = 14; StringStringEntryProto.key = 1, value = 2.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFileError

__all__ = ["external_data_locations", "check_model_file", "read_metadata", "MAX_MODEL_BYTES"]

#: ONNX protobufs are capped at 2 GiB; larger files are not models.
MAX_MODEL_BYTES = 2 << 30
_MAX_DEPTH = 64  # nested subgraphs deeper than this are hostile, not real


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) of one message; bytes fields as memoryviews."""
    pos = 0
    value: int | memoryview | None
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated message")
        yield field, wire, value


def _tensor_locations(buf, out):
    for field, wire, value in _fields(buf):
        if field == 13 and wire == 2:  # external_data entry
            entry = {f: bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if w == 2}
            if entry.get(1) == "location":
                out.append(entry.get(2, ""))


def _sparse_locations(buf, out):
    for field, wire, value in _fields(buf):
        if field in (1, 2) and wire == 2:
            _tensor_locations(value, out)


def _attribute_locations(buf, out, depth):
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field in (5, 10):
            _tensor_locations(value, out)
        elif field in (22, 23):
            _sparse_locations(value, out)
        elif field in (6, 11):
            _graph_locations(value, out, depth + 1)


def _graph_locations(buf, out, depth):
    if depth > _MAX_DEPTH:
        raise ValueError("subgraphs nested too deeply")
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == 5:
            _tensor_locations(value, out)
        elif field == 15:
            _sparse_locations(value, out)
        elif field == 1:
            for f, w, v in _fields(value):
                if f == 5 and w == 2:
                    _attribute_locations(v, out, depth)


def external_data_locations(data: bytes) -> list[str]:
    """Every external-data ``location`` string in a serialized ModelProto.

    Raises:
        ValueError: the bytes are not a well-formed protobuf message.
    """
    out: list[str] = []
    for field, wire, value in _fields(memoryview(data)):
        if field == 7 and wire == 2:
            _graph_locations(value, out, 0)
    return out


def check_model_file(path: Path) -> None:
    """Refuse a missing, empty, oversized or malformed file, or external data outside its folder.

    Raises:
        ModelFileError: naming the file, what is wrong, and the fix.
    """
    if not path.is_file():
        raise ModelFileError(
            f"model file {str(path)!r} does not exist or is not a file; export one with export-unet --out {path.name or 'model.onnx'}"
        )
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"model file {str(path)!r} is empty; re-export it")
    if size > MAX_MODEL_BYTES:
        raise ModelFileError(
            f"model file {str(path)!r} is {size:,} bytes, more than ONNX's 2 GiB limit; it is not a model"
        )
    data = path.read_bytes()
    try:
        locations = external_data_locations(data)
    except ValueError as exc:
        raise ModelFileError(
            f"model file {str(path)!r} is not a valid ONNX protobuf ({exc}); it is truncated or not a model"
        ) from exc
    folder = path.resolve().parent
    for loc in locations:
        target = Path(loc)
        if not loc or target.is_absolute() or loc.startswith(("\\", "/")) or ":" in target.parts[0]:
            raise ModelFileError(
                f"model file {str(path)!r} refers to external data {loc!r}: only paths inside the model's folder are allowed"
            )
        resolved = (folder / target).resolve()
        if os.path.commonpath([resolved, folder]) != str(folder):
            raise ModelFileError(
                f"model file {str(path)!r} refers to external data {loc!r}, which resolves to {str(resolved)!r} outside "
                f"the model's folder {str(folder)!r}; refusing to open it"
            )
        if not resolved.is_file():
            raise ModelFileError(
                f"model file {str(path)!r} needs external data {loc!r}, which is missing next to it"
            )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of a model file (ModelProto field 14), without onnx or a session."""
    data = Path(path).read_bytes()
    props = {}
    try:
        for field, wire, value in _fields(memoryview(data)):
            if field == 14 and wire == 2:
                entry = {
                    f: bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if w == 2
                }
                props[entry.get(1, "")] = entry.get(2, "")
    except ValueError as exc:
        raise ModelFileError(
            f"model file {str(path)!r} is not a valid ONNX protobuf ({exc})"
        ) from exc
    return props
